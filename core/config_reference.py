"""The configuration reference of README.md, generated from what LightningCLI reads.

Every ``model:`` and ``data:`` key of a config is a constructor argument of the class its
``class_path`` names. This module lists the task and datamodule classes that the shipped configs
name, and the project classes they inherit from, each with the arguments of its own
``__init__``: type and default from the signature, description from the ``Args:`` section of
the class docstring as jsonargparse parses it for ``--help`` (``convnext-domains fit --model.help
CLASS`` prints the same text). Classes are found from the configs, so core names no domain.

README.md holds the output between :data:`START` and :data:`END`; ``tests/test_config_reference.py``
fails when it differs from what this module produces, or when an argument has no description::

    python -m core.config_reference            # print the section
    python -m core.config_reference --write    # rewrite it in README.md
    python -m core.config_reference --check    # exit 1 (and say why) when README.md is stale
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.configs import CONFIG_ROOT

START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = "python -m core.config_reference --write"
SECTIONS = ("model", "data")
_SKIPPED_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass
class Argument:
    """One constructor argument as the reference shows it."""

    name: str
    type: str
    default: str
    description: str | None  # None: no ``Args:`` entry that jsonargparse finds


@dataclass
class ClassDoc:
    """One documented task or datamodule class."""

    cls: type
    section: str  # "model" or "data"
    name: str  # the class_path the configs use, else module.qualname
    configs: list[str] = field(default_factory=list)
    arguments: list[Argument] = field(default_factory=list)
    own_init: bool = True

    @property
    def dotted(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"

    @property
    def source_file(self) -> str:
        return self.cls.__module__.replace(".", "/") + ".py"

    def undocumented(self) -> list[str]:
        return [a.name for a in self.arguments if not a.description]


# ---- finding the classes ---------------------------------------------------------------------
def import_class(path: str) -> type:
    """The class a ``class_path`` names (``package.module.Class`` or a package's export)."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def config_class_paths(root: Path = CONFIG_ROOT) -> dict[tuple[str, str], list[str]]:
    """``(section, class_path)`` -> the configs (``configs/<domain>/<job>.yaml``) that name it."""
    import yaml

    found: dict[tuple[str, str], list[str]] = {}
    for path in sorted(root.rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        for section in SECTIONS:
            value = config.get(section)
            class_path = value.get("class_path") if isinstance(value, dict) else value
            if isinstance(class_path, str):
                shown = f"configs/{path.relative_to(root).as_posix()}"
                found.setdefault((section, class_path), []).append(shown)
    return found


def _section_of(cls: type) -> str | None:
    from lightning.pytorch import LightningDataModule, LightningModule

    if issubclass(cls, LightningDataModule):
        return "data"
    if issubclass(cls, LightningModule):
        return "model"
    return None


def documented_classes(root: Path = CONFIG_ROOT) -> list[ClassDoc]:
    """The classes the configs name and the project classes they inherit from, bases first."""
    used = config_class_paths(root)
    by_class: dict[type, ClassDoc] = {}
    for (section, path), configs in used.items():
        cls = import_class(path)
        doc = by_class.setdefault(cls, ClassDoc(cls, section, path))
        doc.configs = sorted({*doc.configs, *configs})
    # The project's packages are those of the configured classes (plus core): bases from
    # Lightning or torch are not ours to document.
    packages = {"core"} | {cls.__module__.split(".")[0] for cls in by_class}
    for cls in list(by_class):
        for base in cls.__mro__[1:]:
            section = _section_of(base)
            if section and base.__module__.split(".")[0] in packages and base not in by_class:
                by_class[base] = ClassDoc(base, section, f"{base.__module__}.{base.__qualname__}")
    for doc in by_class.values():
        doc.own_init = "__init__" in doc.cls.__dict__
        doc.arguments = class_arguments(doc.cls) if doc.own_init else []
    return _tree_order(list(by_class.values()))


def _parent(doc: ClassDoc, docs: dict[type, ClassDoc]) -> ClassDoc | None:
    return next((docs[b] for b in doc.cls.__mro__[1:] if b in docs), None)


def _tree_order(docs: list[ClassDoc]) -> list[ClassDoc]:
    """Tasks, then datamodules; each base class before its subclasses (depth first, by name);
    among unrelated base classes, the one with the most subclasses first."""
    index = {d.cls: d for d in docs}
    children: dict[type | None, list[ClassDoc]] = {}
    for doc in docs:
        parent = _parent(doc, index)
        children.setdefault(parent.cls if parent else None, []).append(doc)

    def size(doc: ClassDoc) -> int:
        return 1 + sum(size(c) for c in children.get(doc.cls, []))

    ordered: list[ClassDoc] = []

    def visit(doc: ClassDoc) -> None:
        ordered.append(doc)
        for child in sorted(children.get(doc.cls, []), key=lambda d: d.name):
            visit(child)

    for section in SECTIONS:
        roots = [d for d in children.get(None, []) if d.section == section]
        for root in sorted(roots, key=lambda d: (-size(d), d.name)):
            visit(root)
    return ordered


# ---- reading a class's arguments -------------------------------------------------------------
def _help_texts(cls: type) -> dict[str, str | None]:
    """Argument -> description, exactly as jsonargparse reads them for LightningCLI's help."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "x", fail_untyped=False)
    return {action.dest[2:]: action.help for action in parser._actions if action.dest.startswith("x.")}


def format_type(hint: Any) -> str:
    """An evaluated type hint in the source's spelling (``int | None``, ``Literal['a', 'b']``)."""
    if hint is None or hint is type(None):
        return "None"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(format_type(a) for a in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(a) for a in args)}]"
    if origin is not None:
        name = getattr(origin, "__name__", None) or str(origin).replace("typing.", "")
        return f"{name}[{', '.join(format_type(a) for a in args)}]" if args else name
    if isinstance(hint, type):
        return hint.__qualname__
    return str(hint).replace("typing.", "")


_NAME = re.compile(r"\b[A-Za-z_]\w*\b")


def annotation_text(annotation: Any, namespace: dict[str, Any]) -> str:
    """An annotation as written in the source, with type aliases of ``namespace`` expanded
    (``AugmentLevel`` -> its ``Literal`` choices).

    The written text, not the evaluated hint: typing caches unions by value, and two Literals
    with the same choices in another order are equal, so an evaluated hint may show the choices
    in the order of whichever module built the union first.
    """
    if annotation is inspect.Parameter.empty:
        return ""
    if not isinstance(annotation, str):
        return format_type(annotation)

    def expand(match: re.Match[str]) -> str:
        value = namespace.get(match.group(0))
        alias = typing.get_origin(value) in (typing.Literal, typing.Union, types.UnionType)
        return format_type(value) if alias else match.group(0)

    return _NAME.sub(expand, annotation)


def format_default(value: Any) -> str:
    """A default as it would be written in YAML."""
    if value is inspect.Parameter.empty:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_default(v) for v in value) + "]"
    return str(value)


def class_arguments(cls: type) -> list[Argument]:
    """The arguments of ``cls``'s own ``__init__`` (``**kwargs`` passed to a base are left to
    the base's entry)."""
    init = cls.__dict__["__init__"]
    helps = _help_texts(cls)
    arguments = []
    for name, param in inspect.signature(init).parameters.items():
        if name == "self" or param.kind in _SKIPPED_KINDS:
            continue
        shown = annotation_text(param.annotation, init.__globals__)
        arguments.append(Argument(name, shown, format_default(param.default), helps.get(name)))
    return arguments


def undocumented(docs: Iterable[ClassDoc] | None = None) -> dict[str, list[str]]:
    """``Class (file)`` -> its arguments without a docstring entry."""
    docs = documented_classes() if docs is None else docs
    return {f"{d.dotted} ({d.source_file})": d.undocumented() for d in docs if d.undocumented()}


# ---- markdown --------------------------------------------------------------------------------
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")


def markdown(text: str) -> str:
    """reStructuredText inline markup (``x``, :class:`~a.B`) as markdown code spans."""
    return _LITERAL.sub(r"`\1`", _ROLE.sub(r"`\1`", text))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    # GitHub tables end a cell at any unescaped pipe, also inside a code span.
    return text.replace("|", "\\|")


def _paragraphs(text: str) -> list[str]:
    return [_one_line(p) for p in re.split(r"\n\s*\n", text) if p.strip()]


def class_description(cls: type) -> list[str]:
    """The class docstring's description (without its ``Args:``), one string per paragraph."""
    import docstring_parser

    parsed = docstring_parser.parse(inspect.getdoc(cls) or "")
    # A first sentence over two lines is parsed as a one-line short description + the rest.
    joint = "\n\n" if parsed.blank_after_short_description else "\n"
    text = joint.join(p for p in (parsed.short_description, parsed.long_description) if p)
    return [markdown(p) for p in _paragraphs(text)]


def _linked() -> tuple[str, ...]:
    from core.cli import LINKED_FROM_DATA

    return LINKED_FROM_DATA


def render_class(doc: ClassDoc, parent: ClassDoc | None) -> list[str]:
    lines = [f"#### `{doc.name}`", ""]
    lines += [p for paragraph in class_description(doc.cls) for p in (paragraph, "")]
    # Not the configs that use it: adding an example config must not make the README stale.
    facts = [f"Defined in `{doc.source_file}`"]
    if parent is not None:
        facts.append(f"also takes every key of `{parent.name}`")
    lines += ["; ".join(facts) + ".", ""]
    if not doc.own_init:
        return lines + ["No keys of its own.", ""]
    if not doc.arguments:
        return lines
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    linked = _linked() if doc.section == "model" else ()
    for arg in doc.arguments:
        default = "linked from `data`" if arg.name in linked else f"`{arg.default}`"
        description = (markdown(_one_line(arg.description)) if arg.description
                       else f"**undocumented**: add `{arg.name}` to the `Args:` of `{doc.dotted}`")
        type_cell = f"`{arg.type}`" if arg.type else ""
        lines.append(f"| `{arg.name}` | {_cell(type_cell)} | {_cell(default)} | {_cell(description)} |")
    return lines + [""]


def render(docs: list[ClassDoc] | None = None) -> str:
    """The text between the markers (without them), ending in a newline."""
    docs = documented_classes() if docs is None else docs
    index = {d.cls: d for d in docs}
    lines = [f"<!-- Generated by `{REGENERATE}` from the constructors' signatures and `Args:`",
             "     docstrings; edit those, not this section. -->", ""]
    titles = {"model": "### Tasks (`model:`)", "data": "### Datamodules (`data:`)"}
    for section in SECTIONS:
        lines += [titles[section], ""]
        for doc in (d for d in docs if d.section == section):
            lines += render_class(doc, _parent(doc, index))
    return "\n".join(lines).rstrip("\n") + "\n"


# ---- README.md -------------------------------------------------------------------------------
def split_readme(text: str) -> tuple[str, str, str]:
    """``(before and START, the section, END and after)``; a clear error without markers."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"README.md needs exactly one '{START}' followed by one '{END}' line")
    head = text[: start + len(START)] + "\n"
    return head, text[len(head) : end], text[end:]


def updated_readme(text: str, section: str) -> str:
    head, _, tail = split_readme(text)
    return head + section + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.config_reference",
                                     description="The configuration reference of README.md.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the section in README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when README.md is stale")
    parser.add_argument("--readme", type=Path, default=README, help="default: the checkout's README.md")
    args = parser.parse_args(argv)
    docs = documented_classes()
    section = render(docs)
    if not (args.write or args.check):
        sys.stdout.write(section)
        return 0
    text = args.readme.read_text()
    new = updated_readme(text, section)
    if args.check:
        if new != text:
            print(f"{args.readme}: the configuration reference is stale; run {REGENERATE}",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new)
        print(f"updated the configuration reference in {args.readme}")
    missing = undocumented(docs)
    for where, names in missing.items():
        print(f"warning: {where}: no docstring entry for {', '.join(names)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
