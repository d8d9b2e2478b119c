"""The configuration reference in README.md is generated from the code and cannot drift."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

pytest.importorskip("rasterio")  # the agriculture classes are part of the reference
pytest.importorskip("pydicom")  # and the medical ones

from lightning.pytorch import LightningDataModule, LightningModule  # noqa: E402

from core import config_reference as ref  # noqa: E402


@pytest.fixture(scope="module")
def docs() -> list[ref.ClassDoc]:
    return ref.documented_classes()


def test_readme_section_is_what_the_generator_writes_now(docs):
    _, section, _ = ref.split_readme(ref.README.read_text())
    assert section == ref.render(docs), (
        f"README.md's configuration reference differs from the code: run `{ref.REGENERATE}` "
        "and commit README.md")


def test_every_constructor_argument_has_a_docstring_entry(docs):
    missing = ref.undocumented(docs)
    lines = [f"{where}: {', '.join(names)}" for where, names in missing.items()]
    assert not missing, ("constructor arguments without an entry in the class's `Args:` docstring "
                         "(LightningCLI's --help and the README show nothing for them; one entry "
                         "per argument, `a, b: ...` is not parsed):\n  " + "\n  ".join(lines))


def test_every_argument_is_documented_in_its_own_class(docs):
    # Regression: the scene datamodule re-declared val_fraction/test_fraction/augment with new
    # defaults but documented them only in the base class; newer jsonargparse finds the base's
    # text, jsonargparse 4.39 (the declared floor) does not, so `make test-min` failed here.
    import docstring_parser

    missing = {}
    for doc in docs:
        own = {p.arg_name for p in docstring_parser.parse(doc.cls.__doc__ or "").params}
        names = [a.name for a in doc.arguments if a.name not in own]
        if names:
            missing[doc.dotted] = names
    assert not missing, f"arguments documented only in a base class's docstring: {missing}"


def _project_classes() -> set[type]:
    """Every task and datamodule class defined in core/ and domains/."""
    found: set[type] = set()
    for package in ("core", "domains"):
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(
                        cls, (LightningModule, LightningDataModule)):
                    found.add(cls)
    return found


def test_every_task_and_datamodule_of_the_project_is_in_the_reference(docs):
    documented = {d.cls for d in docs}
    left_out = sorted(f"{c.__module__}.{c.__qualname__}" for c in _project_classes() - documented)
    assert not left_out, (f"{left_out} are in no config under configs/ (nor a base of one), so the "
                          "configuration reference leaves them out: add an example config")


def test_the_reference_shows_signature_defaults_links_and_bases(docs):
    by_name = {d.dotted: d for d in docs}
    task = by_name["core.task.ConvNeXtTask"]
    assert [a.name for a in task.arguments][:3] == ["backbone", "depths", "dims"]
    text = ref.render(docs)
    assert "| `in_chans` | `int` | linked from `data` |" in text
    # Defaults as YAML, types as written (aliases expanded, pipes escaped for the table).
    assert "| `betas` | `tuple[float, float]` | `[0.9, 0.999]` |" in text
    assert "`Literal['none', 'flips', 'dihedral', 'default', 'strong']`" in text
    assert "`int \\| list[int]`" in text
    # A subclass lists only its own keys and names the class whose keys it also takes.
    defect = next(d for d in docs if d.cls.__name__ == "DefectClassificationTask")
    assert [a.name for a in defect.arguments] == ["target_recall"]
    assert "also takes every key of `core.classification.ClassificationTask`" in text
    assert "configs/manufacturing/folder.yaml" in defect.configs  # found through the configs
    # Every section's classes: tasks before datamodules, each base before its subclasses.
    order = [d.cls for d in docs]
    for doc in docs:
        assert all(order.index(b) < order.index(doc.cls) for b in doc.cls.__mro__[1:] if b in order)
    assert max(i for i, d in enumerate(docs) if d.section == "model") < min(
        i for i, d in enumerate(docs) if d.section == "data")


def test_markup_and_table_cells():
    assert ref.markdown("``a | b`` and :class:`~core.task.ConvNeXtTask`") == (
        "`a | b` and `core.task.ConvNeXtTask`")
    assert ref.format_default(None) == "null" and ref.format_default(False) == "false"
    assert ref.format_default((1, "x")) == "[1, x]"
    assert ref.annotation_text("Channels | None", {"Channels": ref.typing.Literal["gray", "rgb"]}) == (
        "Literal['gray', 'rgb'] | None")


def test_write_replaces_only_the_marked_section(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nintro\n{ref.START}\nold text\n{ref.END}\n\nafter\n")
    monkeypatch.setattr(ref, "render", lambda docs=None: "new text\n")
    monkeypatch.setattr(ref, "documented_classes", lambda root=None: [])
    assert ref.main(["--check", "--readme", str(readme)]) == 1
    assert ref.main(["--write", "--readme", str(readme)]) == 0
    assert readme.read_text() == f"# title\n\nintro\n{ref.START}\nnew text\n{ref.END}\n\nafter\n"
    assert ref.main(["--check", "--readme", str(readme)]) == 0
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="config-reference:start"):
        ref.main(["--write", "--readme", str(readme)])
