"""Bundle schema 2.0: typed input contracts, metadata.schema.json, ``bundle verify``, and the
schema-1.0 bundles written before it (a tiny one is kept in tests/fixtures) still predicting."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core import export
from core.bundle import (
    SCHEMA_FILE,
    SCHEMA_VERSION,
    BundleError,
    load_bundle,
    metadata_digest,
    seal,
)
from core.bundle_verify import verify_bundle
from core.classification import ClassificationTask
from core.contracts import ContractError, InputContract
from core.image_reader import IMAGE, ImageContract
from core.json_schema import SchemaError, schema_of, validate
from core.readers import READERS, contract_json, read_contract
from core.torch_free import run_without_torch
from domains.agriculture.contract import GeoTiffPatchContract, GeoTiffSceneContract
from domains.agriculture.plugin import GEOTIFF_PATCH, GEOTIFF_SCENE
from domains.medical.contract import DicomContract, prediction_frame
from domains.medical.plugin import DICOM

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "fixtures" / "bundle_schema_1_0"


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def _rewrite(bundle: Path, edit) -> None:
    """Change metadata.json and re-digest it, as a faulty writer (not a hand edit) would."""
    meta = json.loads((bundle / "metadata.json").read_text())
    edit(meta)
    meta["metadata_sha256"] = metadata_digest(meta)
    (bundle / "metadata.json").write_text(json.dumps(meta, indent=2))


CONTRACT = IMAGE.contract(channels="gray", in_chans=1, image_size=32, mean=[0.4], std=[0.1],
                          class_names=["good", "scratch"])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A schema-2.0 bundle of a tiny gray classifier, exported from a checkpoint whose contract
    went through the same check a training run's checkpoint does."""
    tmp = tmp_path_factory.mktemp("v2")
    torch.manual_seed(0)
    task = ClassificationTask(**TINY, in_chans=1, num_classes=2, class_names=["good", "scratch"])
    torch.save({"task_class": "core.classification.ClassificationTask",
                "hyper_parameters": dict(task.hparams), "state_dict": task.state_dict(),
                "preprocessing": contract_json(CONTRACT, SCHEMA_VERSION),
                "preprocessing_schema": SCHEMA_VERSION}, tmp / "tiny.ckpt")
    return export.export_bundle(tmp / "tiny.ckpt", tmp / "bundle")


# ---- the schema-1.0 fixture ----------------------------------------------------------------
def test_schema_1_0_fixture_is_what_the_previous_layout_wrote():
    meta = json.loads((OLD / "bundle" / "metadata.json").read_text())
    assert meta["schema_version"] == "1.0" and "$schema" not in meta
    assert not (OLD / "bundle" / SCHEMA_FILE).exists()
    assert meta["backbone"]["depths"] == [1, 1, 1, 1] and meta["input"]["shape"] == [None, 1, 32, 32]


def test_schema_1_0_bundle_still_predicts_without_torch(tmp_path):
    bundle = load_bundle(OLD / "bundle")
    assert isinstance(bundle.contract, ImageContract) and bundle.contract.mode == "gray"
    result = run_without_torch(["predict", "--bundle", str(OLD / "bundle"), str(OLD / "inputs"),
                                "--out", str(tmp_path)], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    got = {Path(r["id"]).name: r for r in csv.DictReader((tmp_path / "predictions.csv").open())}
    expected = {Path(r["id"]).name: r for r in csv.DictReader((OLD / "expected.csv").open())}
    assert sorted(got) == sorted(expected) == ["good_0.png", "scratch_5.png"]
    for name, row in expected.items():  # what the previous layout's predictor wrote
        assert float(got[name]["prob_scratch"]) == pytest.approx(float(row["prob_scratch"]), abs=1e-6)
        assert (got[name]["predicted_class"], got[name]["decision"]) == (row["predicted_class"], row["decision"])


def test_schema_1_0_bundle_verifies_without_a_json_schema():
    result = run_without_torch(["bundle", "verify", str(OLD / "bundle")], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "schema 1.0: no JSON Schema in this version" in result.stdout
    assert "reader 'image' (ImageContract)" in result.stdout
    assert not verify_bundle(OLD / "bundle").json_schema


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["input"].update(reader="hyperspectral"),
     r"input\.reader: input reader 'hyperspectral' is not supported.*\(schema 1\.0\)"),
    (lambda m: m["input"].pop("mean"), r"missing key\(s\) 'input\.mean' \(schema 1\.0, ImageContract"),
    (lambda m: m["input"].pop("reader"), r"no key 'input\.reader' \(schema 1\.0\)"),
    (lambda m: m["input"].update(window="lung"), r"unknown key\(s\) 'input\.window' \(schema 1\.0"),
])
def test_a_schema_1_0_contract_with_a_bad_key_is_refused_naming_it(edit, message, tmp_path):
    copy = _copy(OLD / "bundle", tmp_path)
    _rewrite(copy, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)
    result = run_without_torch(["predict", "--bundle", str(copy), str(OLD / "inputs"), "--out",
                                str(tmp_path / "out")], cwd=ROOT)
    assert result.returncode == 2 and "error: " in result.stderr and "input." in result.stderr
    assert not (tmp_path / "out").exists()


# ---- schema 2.0 bundles ----------------------------------------------------------------------
def test_new_bundles_carry_their_schema_and_changelog(bundle):
    meta = json.loads((bundle / "metadata.json").read_text())
    assert (meta["schema_version"], meta["$schema"]) == (SCHEMA_VERSION, SCHEMA_FILE)
    assert {"1.0", "2.0"} <= set(meta["changelog"])
    assert SCHEMA_FILE in meta["files"]  # sealed with the model
    schema = json.loads((bundle / SCHEMA_FILE).read_text())
    validate(meta, schema, "metadata")  # what any JSON Schema validator can check
    assert schema["properties"]["input"]["properties"]["reader"] == {"const": "image"}
    assert meta["input"] == CONTRACT.to_json() and load_bundle(bundle).contract == CONTRACT


def test_bundle_verify_reports_what_it_checked(bundle):
    result = run_without_torch(["bundle", "verify", str(bundle)], cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"schema {SCHEMA_VERSION}: metadata.json matches {SCHEMA_FILE}" in result.stdout
    files = len(json.loads((bundle / "metadata.json").read_text())["files"])
    assert f"files: {files} match their sha256" in result.stdout


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["input"].pop("channels"), r"missing key\(s\) 'input\.channels' \(schema 2\.1, ImageContract"),
    (lambda m: m["input"].update(tile_size=32), r"unknown key\(s\) 'input\.tile_size' \(schema 2\.1"),
    (lambda m: m["input"].update(mean=["0.4"]), r"input\.mean\[0\]: expected number.*\(schema 2\.1"),
    (lambda m: m["input"].update(shape=[None, 1, 64, 64]), r"input\.shape \[None, 1, 64, 64\] does not match"),
])
def test_a_schema_2_0_contract_with_a_bad_key_is_refused_naming_it(edit, message, bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    _rewrite(copy, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)
    result = run_without_torch(["bundle", "verify", str(copy)], cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "re-export the bundle" in result.stderr


@pytest.mark.parametrize(("change", "message"), [
    ("top_level_key", r"does not match metadata\.schema\.json \(schema 2\.1\): metadata: unknown key\(s\) 'notes'"),
    ("unlisted_file", r"holds notes\.txt, which metadata\.json does not list"),
    ("weaker_schema", r"metadata\.schema\.json is not the schema 2\.1 that convnext-domains writes"),
    ("edited_schema", r"metadata\.schema\.json does not match the sha256"),
])
def test_bundle_verify_refuses(change, message, bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    if change == "top_level_key":
        _rewrite(copy, lambda m: m.update(notes="hand-written"))
    elif change == "unlisted_file":
        (copy / "notes.txt").write_text("not sealed")
    else:
        schema = json.loads((copy / SCHEMA_FILE).read_text())
        schema["properties"]["input"]["additionalProperties"] = True
        (copy / SCHEMA_FILE).write_text(json.dumps(schema))
        if change == "weaker_schema":  # re-sealed: only the comparison with ours can tell
            meta = json.loads((copy / "metadata.json").read_text())
            del meta["metadata_sha256"]
            (copy / "metadata.json").write_text(json.dumps(seal(meta, copy)))
    with pytest.raises(BundleError, match=message):
        verify_bundle(copy)


def test_help_lists_bundle_verify():
    result = run_without_torch(["bundle", "--help"], cwd=ROOT)
    assert result.returncode == 0 and "verify" in result.stdout
    overview = run_without_torch(["--help"], cwd=ROOT)
    assert "bundle verify DIR" in overview.stdout


# ---- the typed contracts -----------------------------------------------------------------------
SCENE = dict(in_chans=3, image_size=32, mean=[0.1, 0.2, 0.3], std=[1.0, 1.0, 1.0],
             class_names=["water", "crop"], bands=["B2", "B3"], band_selection=None,
             band_roles={"red": "B3", "nir": "B4"}, indices=["NDVI"],
             channel_names=["B2", "red", "NDVI"], predict_overlap=8, class_values=[1, 2])


@pytest.mark.parametrize(("reader", "fields", "kind"), [
    (IMAGE, dict(in_chans=3, image_size=[24, 32], mean=[0.5] * 3, std=[0.2] * 3, channels="rgb"), ImageContract),
    (DICOM, dict(in_chans=2, image_size=32, mean=[0.0, 0.0], std=[1.0, 1.0], window=["lung", [40, 400]],
                 frames=2, target_spacing=0.7), DicomContract),
    (GEOTIFF_PATCH, {k: v for k, v in SCENE.items() if k not in ("predict_overlap", "class_values")},
     GeoTiffPatchContract),
    (GEOTIFF_SCENE, SCENE, GeoTiffSceneContract),
])
def test_each_reader_kind_round_trips_through_json(reader, fields, kind):
    contract = reader.contract(**fields)
    assert type(contract) is kind and reader.contract_class is kind and contract.reader == reader.name
    data = json.loads(json.dumps(contract_json(contract, SCHEMA_VERSION)))
    assert read_contract(data, SCHEMA_VERSION) == contract
    assert set(data) == set(kind.json_schema()["required"])  # 2.0 writes every key
    with pytest.raises(AttributeError):
        contract.in_chans = 5  # frozen


def test_a_contract_built_for_another_reader_is_refused_when_stored():
    patch = GeoTiffPatchContract(reader="image", **{k: v for k, v in SCENE.items()
                                                    if k not in ("predict_overlap", "class_values")})
    with pytest.raises(ContractError, match=r"unknown key\(s\) 'input\.bands'"):
        contract_json(patch, SCHEMA_VERSION)


@pytest.mark.parametrize(("fields", "message"), [
    (dict(mean=[0.5, 0.5]), r"input\.mean has 2 value\(s\) for 1 input channel"),
    (dict(std=[0.0]), r"input\.std \[0\.0\] must be positive"),
    (dict(mean=[float("nan")]), r"input\.mean \[nan\] holds a value that is not finite"),
    (dict(channels="rgb"), r"input\.channels 'rgb' gives 3 channel\(s\), but input\.in_chans is 1"),
    (dict(in_chans=np.int64(1)), r"input\.in_chans: expected integer, got int64"),
])
def test_bad_values_are_refused_when_a_contract_is_built(fields, message):
    base = dict(in_chans=1, image_size=32, mean=[0.5], std=[0.2], channels="gray")
    with pytest.raises(ContractError, match=message):
        IMAGE.contract(**{**base, **fields})


def test_schema_1_0_scene_contracts_read_tile_size_as_the_input_size():
    old = {k: v for k, v in GEOTIFF_SCENE.contract(**SCENE).to_json().items()
           if k not in ("band_selection", "dtype", "layout", "shape")}
    old.update(image_size=64, tile_size=32)  # 1.0: the base's image_size beside the reader's key
    contract = read_contract(old, "1.0")
    assert contract.image_size == contract.tile_size == 32
    # Contracts from before band_selection select the resolved band names, as they did.
    assert contract.band_selection == ("B2", "B3")
    with pytest.raises(ContractError, match=r"unknown key\(s\) 'input\.tile_size' \(schema 2\.0"):
        read_contract({**GEOTIFF_SCENE.contract(**SCENE).to_json(), "tile_size": 32}, "2.0")


def test_every_frame_training_predicts_the_middle_frame_on_both_paths():
    assert prediction_frame("all") == "middle" and prediction_frame(3) == 3
    contract = DICOM.contract(in_chans=1, image_size=32, mean=[0.0], std=[1.0], frames="all")
    assert contract.frames == "all" and contract.prediction_frame == "middle"


def test_a_plug_in_reader_without_own_fields_uses_the_base_contract():
    npy = READERS["tests.fake_plugin.reader:NPY"]
    contract = npy.contract(in_chans=2, image_size=16, mean=[0.0, 0.0], std=[1.0, 1.0])
    assert type(contract) is InputContract
    assert read_contract(contract.to_json(), SCHEMA_VERSION) == contract


# ---- the JSON Schema subset ----------------------------------------------------------------
def test_type_hints_become_json_schema_and_values_are_checked_with_their_place():
    from typing import Literal

    schema = {"type": "object", "properties": {
        "size": schema_of(int | tuple[int, int]), "roles": schema_of(dict[str, str]),
        "mode": schema_of(Literal["a", "b"] | None)}, "required": ["size"], "additionalProperties": False}
    validate({"size": [3, 4], "roles": {"red": "B4"}, "mode": None}, schema)
    for value, message in [({"size": [3, 4, 5]}, r"value\.size: .* matches none"),
                           ({"size": True}, r"value\.size: .* matches none"),
                           ({"size": 3, "roles": {"red": 4}}, r"value\.roles\.red: expected string"),
                           ({"size": 3, "mode": "c"}, r"value\.mode: 'c' matches none"),
                           ({"mode": "a"}, r"value: key\(s\) 'size' missing"),
                           ({"size": 3, "extra": 1}, r"value: unknown key\(s\) 'extra'")]:
        with pytest.raises(SchemaError, match=message):
            validate(value, schema)
    with pytest.raises(ValueError, match="unsupported keyword"):
        validate(1, {"pattern": "x"})
