"""Rename one domain into another in text: module paths, identifiers, prose and file names.

``new-domain`` copies a domain's files and passes each through :class:`DomainRename`. The rules
work on whatever the files hold, so a domain can be restructured without touching the cloner:

- ``medical`` as a word or a snake_case part (``domains.medical``, ``configs/medical/``,
  ``test_medical_segmentation``, ``medical_classification``) -> the new name;
  ``MEDICAL`` as a word or an UPPER_CASE part (``MEDICAL_EXTRA``) -> the new name in capitals.
- ``Medical`` alone (prose, a heading) -> the new name capitalised, underscores as spaces.
- ``Medical`` inside a CamelCase identifier -> the new name in CamelCase, but only for names the
  domain's own Python files define (``MedicalClassificationTask``); others are someone
  else's names (the DICOM keyword ``MedicalRecordLocator``) and stay.
- Kept as they are: the pip extra the domain's code needs (``convnext-domains[medical]``, a
  string equal to the extra assigned to an ``extra``/``EXTRA`` name), because the clone needs
  the same packages; and every line marked ``# new-domain: keep`` (data that happens to spell
  the name, e.g. a land-cover class called ``agriculture``).
- A reader's short built-in name (``"dicom"``) becomes the clone's dotted path
  (``"domains.pathology.plugin:DICOM"``), so the clone's bundles use the clone's reader.
- Extra whole-token renames (test modules given the new name as a prefix) apply everywhere.

Everything is one pass over the text, so a new name that contains the old one
(``medical`` -> ``medical_imaging``) is never renamed twice.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping

KEEP_MARKER = "new-domain: keep"
"""A line containing this (in a comment) is copied unchanged."""


def camel(name: str) -> str:
    """``retail_shelf`` -> ``RetailShelf``."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def defined_names(sources: Iterable[str]) -> set[str]:
    """Every name the given Python sources define: classes, functions, assigned names,
    arguments and import aliases (sources that do not parse define nothing)."""
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
    return names


class DomainRename:
    """Text and path renaming from domain ``old`` to domain ``new`` (see the module docstring).

    Args:
        old: The template domain's name (a lower-case identifier).
        new: The new domain's name (a lower-case identifier).
        defined: Names defined by the template's Python files (see :func:`defined_names`).
        extra: The pip extra the template's code needs, kept as is (None: none).
        readers: A reader's short name -> the clone's dotted path for it.
        tokens: Whole identifiers renamed as given (e.g. ``test_dicom`` -> ``test_retail_dicom``).
    """

    def __init__(self, old: str, new: str, defined: Iterable[str] = (), extra: str | None = None,
                 readers: Mapping[str, str] | None = None,
                 tokens: Mapping[str, str] | None = None) -> None:
        self.old, self.new = old, new
        self.defined = frozenset(defined)
        self.readers = dict(readers or {})
        self.tokens = dict(tokens or {})
        self._camel_old, self._upper_old = camel(old), old.upper()
        # Word parts inside an identifier: snake/UPPER parts end at _, a digit, the end or (for
        # lower case) a following capital; a CamelCase part ends where the next part starts.
        self._part = re.compile(
            rf"(?<![a-z]){re.escape(old)}(?![a-z])"
            rf"|(?<![A-Za-z]){re.escape(self._upper_old)}(?![A-Za-z])"
            rf"|{re.escape(self._camel_old)}(?![a-z])")
        alternatives = [rf"(?P<keep>^[^\n]*{re.escape(KEEP_MARKER)}[^\n]*$)"]
        if extra:
            alternatives += [
                r"(?P<pip>convnext-domains\[[^\]\n]*\])",
                rf"(?P<extra_name>\b\w*(?i:extra)\w*\s*[:=]\s*)"
                rf"(?P<extra_value>(?P<eq>[\"']){re.escape(extra)}(?P=eq))",
            ]
        if self.readers:
            names = "|".join(re.escape(n) for n in sorted(self.readers, key=len, reverse=True))
            alternatives.append(rf"(?P<reader>(?P<rq>[\"'])(?:{names})(?P=rq))")
        alternatives.append(r"(?P<token>[A-Za-z0-9_]+)")
        self._scan = re.compile("|".join(alternatives), re.MULTILINE)

    def text(self, text: str) -> str:
        """``text`` with every mention of the old domain renamed."""
        return self._scan.sub(self._replace, text)

    def path(self, relative: str) -> str:
        """A ``/``-separated relative path with the old domain renamed in each part."""
        return "/".join(self.text(part) for part in relative.split("/"))

    def _replace(self, match: re.Match[str]) -> str:
        found = match.groupdict()
        if found["token"] is not None:
            return self._token(found["token"])
        if found.get("extra_name") is not None:
            return self.text(found["extra_name"]) + found["extra_value"]
        if found.get("reader") is not None:
            quote, name = found["rq"], found["reader"][1:-1]
            return f"{quote}{self.readers[name]}{quote}"
        return match.group(0)  # kept: a marked line, a pip extra

    def _token(self, token: str) -> str:
        if token in self.tokens:
            return self.tokens[token]
        if token == self._camel_old and token not in self.defined:
            # The word on its own (prose, a heading): "Retail shelf", not "RetailShelf".
            return self.new.replace("_", " ").capitalize()
        if token not in self.defined:
            # Someone else's CamelCase name keeps its capitalised part.
            return self._part.sub(lambda m: m.group(0) if m.group(0) == self._camel_old
                                  else self._renamed(m.group(0)), token)
        return self._part.sub(lambda m: self._renamed(m.group(0)), token)

    def _renamed(self, part: str) -> str:
        if part == self.old:
            return self.new
        if part == self._upper_old:
            return self.new.upper()
        return camel(self.new)
