"""Export, step 5: the bundle's own torch-free predictor.

``predict.py`` (a launcher that checks every sha256 of the bundle before it runs the predictor),
``requirements.txt`` (with the version floors convnext-domains declares) and ``predictor/``
(copies of the project modules :func:`core.export_modules.predictor_modules` finds).
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
from pathlib import Path
from typing import Any

from core.bundle import LAUNCHER, PREDICTOR, REQUIREMENTS
from core.errors import DataError
from core.export_modules import module_source, predictor_modules
from core.predict_bundle import BASE_PACKAGES
from core.readers import READERS

DISTRIBUTION = "convnext-domains"

LAUNCHER_SOURCE = '''"""Predict with this bundle; needs neither torch nor a convnext-domains checkout.

    pip install -r requirements.txt
    python predict.py INPUT... --out OUT [--threshold T]   (detectors: [--score-threshold T])

predictor/ is a copy of convnext-domains' torch-free prediction code, made at export and sealed
with the model in metadata.json: a modified file is refused before it runs.
"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if sys.version_info < (3, 10):
    sys.exit("error: this predictor needs Python 3.10 or newer")
sys.dont_write_bytecode = True  # leave the handed-over folder exactly as it was sealed
sys.path.insert(0, str(HERE / "predictor"))


def _missing(err: ImportError) -> None:
    print(f"error: {err}; install this bundle's requirements: pip install -r "
          f"{HERE / 'requirements.txt'}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    try:
        from core.bundle import BundleError, load_bundle
    except ImportError as err:
        _missing(err)
    try:
        load_bundle(HERE)  # every sha256, the predictor's included, before it is imported
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        from core.predict_bundle import main
        main(sys.argv[1:], bundle=HERE)
    except ModuleNotFoundError as err:  # a reader's package (pydicom, rasterio) is missing
        _missing(err)
'''


def _canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# name, optional [extras], version specifier, optional "; marker" of a PEP 508 requirement
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)")


def _requirements_of(distribution: str) -> dict[str, str]:
    """``{canonical name: requirement}`` from an installed distribution's metadata."""
    found: dict[str, str] = {}
    for text in importlib.metadata.requires(distribution) or []:
        match = _REQUIREMENT.match(text)
        if match:
            name, specifier = match.group(1), match.group(2).replace(" ", "")
            found.setdefault(_canonical(name), f"{name}{specifier}")
    return found


def _declared_requirements() -> dict[str, str]:
    """``{canonical name: requirement}`` from the installed convnext-domains' metadata.

    That metadata is pyproject.toml's dependencies and extras, so the floors are declared once.
    """
    try:
        return _requirements_of(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise DataError(f"{DISTRIBUTION} is not installed, so its declared requirements are "
                        "unknown; install it (pip install -e '.[export]') and export again") from err


def reader_distribution(reader: str) -> str | None:
    """The installed distribution (other than ours) that ships a plug-in ``reader``'s module."""
    top = type(READERS[reader]).__module__.split(".")[0]
    owners = [d for d in importlib.metadata.packages_distributions().get(top, [])
              if _canonical(d) != DISTRIBUTION]
    return owners[0] if owners else None


def predictor_requirements(reader: str) -> list[str]:
    """requirements.txt lines of a ``reader`` bundle, with the declared version floors.

    A package is looked up in convnext-domains' requirements first, then, for a plug-in reader
    that another distribution ships, in that distribution's own requirements: a plug-in
    declares the floors of what its reader needs where it declares its other dependencies.
    """
    declared = _declared_requirements()
    plugin = reader_distribution(reader)
    if plugin is not None:
        declared = {**_requirements_of(plugin), **declared}
    lines = []
    for package in (*BASE_PACKAGES, *READERS[reader].packages):
        if _canonical(package) not in declared:
            where = f"{DISTRIBUTION}'s pyproject.toml" + (f" or {plugin}'s" if plugin else "")
            raise DataError(f"no installed requirement declares {package}, which the '{reader}' "
                            f"predictor needs; declare it (with a version floor) in {where}")
        lines.append(declared[_canonical(package)])
    return lines


def write_predictor(folder: Path, reader: str) -> dict[str, Any]:
    """Write ``predict.py``, ``requirements.txt`` and ``predictor/`` into ``folder``.

    Returns the ``predictor`` entry of metadata.json.
    """
    modules = predictor_modules(reader)
    for name in modules:
        source = module_source(name)
        relative = Path(*name.split("."))
        relative = relative / "__init__.py" if source.name == "__init__.py" else relative.with_suffix(".py")
        target = folder / PREDICTOR / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    requirements = predictor_requirements(reader)
    (folder / REQUIREMENTS).write_text(
        f"# Packages of this bundle's predictor ({LAUNCHER}); no torch needed.\n"
        f"# pip install -r {REQUIREMENTS}\n" + "".join(f"{line}\n" for line in requirements))
    (folder / LAUNCHER).write_text(LAUNCHER_SOURCE)
    return {"command": f"python {LAUNCHER} INPUT... --out OUT", "requirements": requirements,
            "modules": modules, "python": ">=3.10"}
