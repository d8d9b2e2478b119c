"""``convnext-domains new-domain NAME --from DOMAIN``: clone a domain into a new, tested one.

The template is a domain of the checkout this command runs from: its package
``domains/DOMAIN/``, its configs ``configs/DOMAIN/`` and the test modules its plug-in lists
(:attr:`core.plugins.DomainPlugin.tests`). Every file is copied with the domain renamed
(:mod:`core.domain_rename`); test modules whose name does not mention the domain get the new
name as a prefix (``test_dicom.py`` -> ``test_NAME_dicom.py``). The clone registers itself: its
``plugin.py`` is the copy's, packaging finds ``domains/NAME`` like any package, and its tests
run its configs on the synthetic data they generate.

Files appear complete or not at all (:func:`core.atomic.write_tree_atomic`); ``--dry-run``
lists them and writes nothing; ``--into DIR`` writes into another checkout. Afterwards the
configuration reference in the target's README.md is regenerated, since the clone's configs add
classes to it (``tests/test_config_reference.py`` would fail on a stale one).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import keyword
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.atomic import write_tree_atomic
from core.domain_rename import DomainRename, defined_names
from core.errors import UserError
from core.plugins import PLUGIN_ATTRIBUTE, PLUGIN_MODULE, DomainPlugin

DOMAINS, CONFIGS, TESTS = "domains", "configs", "tests"
# Lower case, so that the capitalised and upper-case forms of the name are unambiguous.
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")
_SKIPPED_DIRS = {"__pycache__"}
_SKIPPED_SUFFIXES = (".pyc", ".pyo")


class NewDomainError(UserError):
    """A name, template or target that ``new-domain`` cannot use; nothing was written."""


@dataclass(frozen=True)
class ClonePlan:
    """What cloning would write: paths relative to :attr:`target` -> contents."""

    template: str
    name: str
    target: Path
    files: dict[str, bytes]

    def tests(self) -> list[str]:
        """The generated test modules, relative to :attr:`target`."""
        return sorted(p for p in self.files if p.startswith(f"{TESTS}/") and p.endswith(".py"))


def source_root() -> Path:
    """The checkout whose ``domains`` package is imported: the templates come from it."""
    spec = importlib.util.find_spec(DOMAINS)
    if spec is None or not spec.submodule_search_locations:
        raise NewDomainError("the 'domains' package cannot be found; run from a checkout of "
                             "convnext-domains")
    return Path(list(spec.submodule_search_locations)[0]).resolve().parent


def available_domains(root: Path) -> list[str]:
    """Domains under ``root/domains`` that declare a plug-in (the possible templates)."""
    return sorted(p.parent.name for p in (root / DOMAINS).glob(f"*/{PLUGIN_MODULE}.py")
                  if (p.parent / "__init__.py").is_file())


def check_name(name: str, target: Path) -> None:
    """Refuse a name that is not a lower-case Python identifier, or is taken in ``target``."""
    hint = "use a lower-case Python identifier such as retail or retail_shelf"
    if not name:
        raise NewDomainError(f"the new domain needs a name: {hint}")
    if "/" in name or "\\" in name or ".." in name:
        raise NewDomainError(f"domain name '{name}' is a path, not a name: {hint} (and --into "
                             "DIR to write into another checkout)")
    if keyword.iskeyword(name):
        raise NewDomainError(f"domain name '{name}' is a Python keyword and cannot be imported "
                             f"as domains.{name}: {hint}")
    if not _NAME.match(name):
        raise NewDomainError(f"domain name '{name}' is not a lower-case Python identifier "
                             f"(letters, digits and _, starting with a letter): {hint}")
    for taken in (target / DOMAINS / name, target / CONFIGS / name):
        if taken.exists():
            raise NewDomainError(f"domain '{name}' already exists in {target} "
                                 f"({taken.relative_to(target)}/); pick another name")


def check_target(target: Path) -> None:
    """Refuse a target folder that is not a convnext-domains checkout."""
    if not (target / DOMAINS / "__init__.py").is_file():
        raise NewDomainError(f"'{target}' is not a convnext-domains checkout (it has no "
                             f"{DOMAINS}/__init__.py); pass --into the project's root folder")


def load_plugin(template: str) -> DomainPlugin:
    """The template's plug-in (its ``plugin`` module imports neither torch nor its extra)."""
    module = importlib.import_module(f"{DOMAINS}.{template}.{PLUGIN_MODULE}")
    plugin = getattr(module, PLUGIN_ATTRIBUTE, None)
    if not isinstance(plugin, DomainPlugin):
        raise NewDomainError(f"{module.__name__} has no {PLUGIN_ATTRIBUTE} = DomainPlugin(...)")
    return plugin


def template_files(root: Path, template: str, plugin: DomainPlugin) -> dict[str, bytes]:
    """The template's files, by path relative to ``root``: package, configs and tests."""
    files: dict[str, bytes] = {}
    for folder in (root / DOMAINS / template, root / CONFIGS / template):
        for path in sorted(folder.rglob("*")):
            skipped = _SKIPPED_DIRS & set(path.relative_to(folder).parts)
            if path.is_file() and not skipped and not path.name.endswith(_SKIPPED_SUFFIXES):
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    for test in plugin.tests:
        path = root / TESTS / test
        if not path.is_file():
            raise NewDomainError(f"domain '{template}' lists test {TESTS}/{test}, which is not in "
                                 f"{root}; clone from a git checkout of convnext-domains")
        files[f"{TESTS}/{test}"] = path.read_bytes()
    return files


def _renamer(template: str, name: str, plugin: DomainPlugin, files: dict[str, bytes]) -> DomainRename:
    """The renaming rules for this clone, with the template's readers and test modules."""
    from core.readers import READERS

    sources = [data.decode("utf-8", "replace") for path, data in files.items() if path.endswith(".py")]
    defined = defined_names(sources)
    base = DomainRename(template, name, defined, plugin.extra)
    # Built-in readers keep short names for old bundles; the clone's readers are found by path.
    readers = {r.name: base.text(READERS.path_of(r.name)) for r in plugin.readers if ":" not in r.name}
    tokens = {}
    for test in plugin.tests:
        stem = Path(test).stem
        if base.text(stem) == stem:
            tokens[stem] = (f"test_{name}_{stem[5:]}" if stem.startswith("test_") else f"{name}_{stem}")
    return DomainRename(template, name, defined, plugin.extra, readers, tokens)


def plan_clone(template: str, name: str, target: Path) -> ClonePlan:
    """Check the name and target, and work out every file of the clone (nothing is written)."""
    root = source_root()
    target = target.resolve()
    check_target(target)
    check_name(name, target)
    if template not in available_domains(root):
        raise NewDomainError(f"no domain '{template}' in {root / DOMAINS} (domains with a "
                             f"plugin.py: {', '.join(available_domains(root))})")
    plugin = load_plugin(template)
    files = template_files(root, template, plugin)
    rename = _renamer(template, name, plugin, files)
    out: dict[str, bytes] = {}
    for path, data in files.items():
        new_path = rename.path(path)
        try:
            data = rename.text(data.decode("utf-8")).encode("utf-8")
        except UnicodeDecodeError:
            pass  # binary data (an image, a small fixture) is copied as it is
        out[new_path] = data
    taken = [p for p in out if (target / p).exists()]
    if taken:
        raise NewDomainError(f"{target / taken[0]} already exists; pick another domain name")
    return ClonePlan(template, name, target, out)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile, so an interrupted clone is cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("new-domain interrupted by SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_clone(plan: ClonePlan) -> list[Path]:
    """Write the clone; each new top-level path appears complete or not at all."""
    with _sigterm_interrupts():
        return write_tree_atomic(plan.target, plan.files, label=f"new-domain-{plan.name}")


def refresh_config_reference(target: Path) -> str:
    """Regenerate the configuration reference of ``target``'s README.md in a child process.

    A child process, so the classes are imported from ``target`` (``--into`` another checkout)
    and not from this one. Returns a line for the summary: what was done, or the command to run.
    """
    from core.config_reference import REGENERATE, START

    readme = target / "README.md"
    if not readme.is_file() or START not in readme.read_text(encoding="utf-8"):
        return f"no configuration reference to update ({readme} has no {START} marker)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(target), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-m", "core.config_reference", "--write", "--readme",
                             str(readme)], cwd=target, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return (f"warning: the configuration reference in {readme} was not updated ({last}); "
                f"fix that, then run `{REGENERATE}` in {target}")
    return f"updated the configuration reference in {readme}"


def summary(plan: ClonePlan, dry_run: bool) -> str:
    """The files written (or, for a dry run, that would be), and what to do next."""
    verb = "would write" if dry_run else "wrote"
    lines = [f"new domain '{plan.name}' from '{plan.template}': {verb} {len(plan.files)} files "
             f"into {plan.target}" + (" (dry run: nothing written)" if dry_run else ""),
             *(f"  {p}" for p in sorted(plan.files))]
    if not dry_run:
        lines += [f"next: make it yours in {DOMAINS}/{plan.name}/ (plugin.py with its reader, "
                  f"datamodules, task, README.md), {CONFIGS}/{plan.name}/ and its tests; run them:",
                  f"  python -m pytest -q {' '.join(plan.tests())}"]
    return "\n".join(lines)


def build_parser(templates: Sequence[str]) -> argparse.ArgumentParser:
    """The ``new-domain`` command line."""
    parser = argparse.ArgumentParser(
        prog="convnext-domains new-domain",
        description="Create domains/NAME/, configs/NAME/ and tests/test_NAME*.py from an "
                    "existing domain, with every mention of it renamed; the tests it writes "
                    "pass at once and run its configs on synthetic data.")
    parser.add_argument("name", metavar="NAME",
                        help="the new domain: a lower-case Python identifier, e.g. retail_shelf")
    parser.add_argument("--from", dest="template", required=True, choices=list(templates),
                        help="the domain to start from")
    parser.add_argument("--into", type=Path, default=Path("."), metavar="DIR",
                        help="the checkout to write into (default: the current folder)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the files it would write and write nothing")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``new-domain`` with ``argv`` (default: the process arguments)."""
    root = source_root()
    args = build_parser(available_domains(root)).parse_args(argv)
    plan = plan_clone(args.template, args.name, args.into)
    if not args.dry_run:
        write_clone(plan)
    print(summary(plan, args.dry_run))
    if not args.dry_run:
        print(refresh_config_reference(plan.target))


if __name__ == "__main__":
    main(sys.argv[1:])
