"""Which project modules a bundle's torch-free predictor needs, found by following imports.

The list starts at :data:`core.predict_bundle.PREDICTOR_MODULES` and the reader's declared
modules (:func:`core.readers.reader_modules`) and follows the code (AST of each module), so it is
never kept by hand. A reader from another package (a team's plug-in) brings its package along.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from core.errors import DataError
from core.predict_bundle import PREDICTOR_MODULES
from core.readers import READERS, reader_modules

# Top-level packages of this project: the predictor copies their modules, and those of the
# reader's own package, nothing else.
PROJECT_PACKAGES = ("core", "domains")


def module_source(name: str) -> Path | None:
    """The source file of a project module (``__init__.py`` for a package), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _is_type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import: module level, inside if/try/with blocks, not in defs."""
    for node in body:
        if _is_type_checking(node):
            continue
        yield node
        if isinstance(node, ast.If | ast.Try | ast.With):
            for block in ("body", "orelse", "finalbody"):
                yield from _top_level(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _top_level(handler.body)


def _imports(name: str, tree: ast.Module, module_level: bool,
             roots: tuple[str, ...] = PROJECT_PACKAGES) -> set[str]:
    """Modules of the ``roots`` packages imported by module ``name``: at import time, or lazily
    inside functions.

    ``from pkg import x`` counts ``pkg.x`` when that is a module; relative imports are resolved.
    """
    source = module_source(name)
    package = name if source is not None and source.name == "__init__.py" else name.rpartition(".")[0]
    top = list(_top_level(tree.body))
    if module_level:
        nodes = top
    else:
        skip = {id(n) for n in top}
        skip |= {id(n) for node in ast.walk(tree) if _is_type_checking(node) for n in ast.walk(node)}
        nodes = [n for n in ast.walk(tree) if id(n) not in skip]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if base.split(".")[0] in roots
                         and module_source(f"{base}.{alias.name}") is not None)
    return {m for m in found if m.split(".")[0] in roots and module_source(m) is not None}


def reader_packages(reader: str) -> tuple[str, ...]:
    """The packages outside core that a reader's declared modules live in (none for images)."""
    packages = {m.rpartition(".")[0] for m in reader_modules(READERS[reader])}
    return tuple(sorted(p for p in packages if p and not _carried(p, ())))


def _carried(module: str, packages: tuple[str, ...]) -> bool:
    """Whether a lazily imported ``module`` belongs in the bundle: core, or the reader's package."""
    return any(module == p or module.startswith(f"{p}.") for p in ("core", *packages))


def predictor_modules(reader: str) -> list[str]:
    """Every project module the torch-free predictor of a ``reader`` bundle can import.

    Starts from :data:`core.predict_bundle.PREDICTOR_MODULES` and the reader's declared
    modules, adds the packages (``__init__``) above each and follows their imports of project
    modules and of the reader's own top-level package: all module-level ones, and those inside
    functions when they stay in core or in the reader's own package (so a DICOM bundle carries
    no agriculture code). The list follows the code instead of being kept by hand.
    """
    declared = reader_modules(READERS[reader])
    packages = reader_packages(reader)
    roots = tuple(dict.fromkeys((*PROJECT_PACKAGES, *(m.split(".")[0] for m in declared))))
    todo = [*PREDICTOR_MODULES, *declared]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        source = module_source(name)
        if source is None:
            raise DataError(f"the predictor of '{reader}' bundles needs module {name}, which cannot "
                            "be found; reinstall convnext-domains, or the package of that reader")
        seen.add(name)
        parts = name.split(".")
        tree = ast.parse(source.read_text(), str(source))
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(name, tree, module_level=True, roots=roots))
        todo += sorted(m for m in _imports(name, tree, module_level=False, roots=roots)
                       if _carried(m, packages))
    return sorted(seen)
