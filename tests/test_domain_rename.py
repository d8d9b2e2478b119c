"""The renaming rules of new-domain on small texts: what is renamed, what is kept, and why."""

from __future__ import annotations

import pytest

from core.domain_rename import DomainRename, camel, defined_names

TEMPLATE = '''"""Medical tasks for medical images (biomedical stays)."""
from domains.medical.dicom import read_dicom

EXTRA = "medical"
MEDICAL_EXTRA = "pip install 'convnext-domains[medical]'"
SCRUBBED = ("MedicalRecordLocator", "PatientName")
CLASSES = ["medical", "other"]  # new-domain: keep


class MedicalClassificationTask:
    name = "dicom"
    config = "configs/medical/classification.yaml"
    run = "medical_classification"
'''


def rename(new: str = "pathology", **kwargs) -> DomainRename:
    return DomainRename("medical", new, defined_names([TEMPLATE]), extra="medical",
                        readers={"dicom": f"domains.{new}.plugin:DICOM"}, **kwargs)


def test_a_template_is_renamed_everywhere_it_names_the_domain():
    out = rename().text(TEMPLATE)
    assert '"""Pathology tasks for pathology images (biomedical stays)."""' in out
    assert "from domains.pathology.dicom import read_dicom" in out
    assert "class PathologyClassificationTask:" in out
    assert 'config = "configs/pathology/classification.yaml"' in out
    assert 'run = "pathology_classification"' in out
    assert "PATHOLOGY_EXTRA = " in out


def test_what_is_not_the_domains_name_is_kept():
    out = rename().text(TEMPLATE)
    # The clone needs the same packages: the pip extra keeps its name.
    assert 'EXTRA = "medical"' in out and "'convnext-domains[medical]'" in out
    # A DICOM keyword is not a name the domain defines.
    assert '("MedicalRecordLocator", "PatientName")' in out
    # A marked line (data that spells the name) is copied as it is.
    assert 'CLASSES = ["medical", "other"]  # new-domain: keep' in out


def test_a_builtin_readers_short_name_becomes_the_clones_dotted_path():
    out = rename().text(TEMPLATE)
    assert 'name = "domains.pathology.plugin:DICOM"' in out
    assert '"dicom"' not in out


def test_a_new_name_containing_the_old_one_is_renamed_once():
    out = rename("medical_imaging").text(TEMPLATE)
    assert "from domains.medical_imaging.dicom import" in out
    assert "class MedicalImagingClassificationTask:" in out
    assert '"""Medical imaging tasks for medical_imaging images' in out
    assert "medical_imaging_imaging" not in out


def test_paths_and_extra_tokens():
    r = rename(tokens={"test_dicom": "test_pathology_dicom"})
    assert r.path("tests/test_medical_segmentation.py") == "tests/test_pathology_segmentation.py"
    assert r.path("domains/medical/plugin.py") == "domains/pathology/plugin.py"
    assert r.text('tests=("test_medical.py", "test_dicom.py")') == \
        'tests=("test_pathology.py", "test_pathology_dicom.py")'


@pytest.mark.parametrize(("name", "expected"), [("retail", "Retail"), ("retail_shelf", "RetailShelf"),
                                                ("x2_ray", "X2Ray")])
def test_camel(name, expected):
    assert camel(name) == expected


def test_defined_names_sees_classes_functions_assignments_and_arguments():
    names = defined_names(["class A:\n    b = 1\n\ndef f(c, *, d=2):\n    e = c\n",
                           "import x as y\n", "not python ("])
    assert {"A", "b", "f", "c", "d", "e", "y"} <= names and "x" not in names
