"""DICOM reader: modality LUT, windows, photometrics, bit depths, frames, spacing, codecs, errors.

Files are written with pydicom into tmp_path, or taken from the small test files bundled with
pydicom (never downloaded: missing ones are skipped).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom import uid  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.datadict import tag_for_keyword  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import convert_color_space, get_decoder, get_encoder  # noqa: E402

from core.data import DataError  # noqa: E402
from domains.medical import dicom as dicom_module  # noqa: E402
from domains.medical.dicom import (  # noqa: E402
    PATIENT_IDENTIFIER_TAGS,
    WINDOW_PRESETS,
    _linear_window,
    count_frames,
    dicom_meta,
    parse_windows,
    read_dicom,
)
from tests.dicom_helpers import PATIENT, write_dicom  # noqa: E402


def bundled(name: str) -> str:
    """Path of a test file shipped inside pydicom; skip (never download) when absent."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return path


# ---- modality LUT and windows ----------------------------------------------------------------
def test_ct_rescale_gives_hounsfield_units(tmp_path):
    stored = np.array([[0, 1000, 1024], [2048, 3000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, bits_stored=12, RescaleSlope=1,
                       RescaleIntercept=-1024, PixelSpacing=[0.7, 0.7])
    img = read_dicom(path)
    assert img.image.dtype == np.float32 and img.image.shape == (2, 3, 1)
    np.testing.assert_array_equal(img.image[..., 0], stored.astype(np.float32) - 1024)
    assert img.channel_names == ("value",) and img.modality == "CT"

    path = write_dicom(tmp_path / "ct2.dcm", stored, bits_stored=12, RescaleSlope=2,
                       RescaleIntercept=-1000)
    np.testing.assert_array_equal(read_dicom(path).image[..., 0], stored * 2.0 - 1000)


def hu_file(tmp_path: Path, hu: np.ndarray, **attrs) -> Path:
    """A signed CT file whose slope 0.5 lets it hold half-HU values exactly."""
    stored = np.round(np.asarray(hu) * 2).astype(np.int16).reshape(1, -1)
    return write_dicom(tmp_path / "hu.dcm", stored, RescaleSlope=0.5, RescaleIntercept=0, **attrs)


def test_window_follows_pydicom_linear_formula(tmp_path):
    hu = np.array([-1000, -160, -159.5, 0, 40, 239, 239.5, 240, 3000])
    path = hu_file(tmp_path, hu)
    out = read_dicom(path, window=(40, 400)).image[0, :, 0].astype(np.float64)
    # PS3.3 C.11.2.1.2.1 as pydicom computes it: c' = c - 0.5, w' = w - 1;
    # x <= c' - w'/2 -> 0, x > c' + w'/2 -> 1, else (x - c') / w' + 0.5.
    expected = np.clip((hu - 39.5) / 399 + 0.5, 0, 1)
    expected[hu <= 39.5 - 199.5] = 0.0
    expected[hu > 39.5 + 199.5] = 1.0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[1] == 0.0 and out[7] == 1.0            # -160 HU -> 0, 240 HU -> 1
    assert out[4] == pytest.approx(0.5 + 0.5 / 399)   # the center maps just above 0.5
    # The soft-tissue preset is that same window.
    np.testing.assert_array_equal(read_dicom(path, window="soft_tissue").image[0, :, 0],
                                  out.astype(np.float32))


def test_float32_window_equals_pydicoms_float64_formula(tmp_path):
    """The one-pass float32 window agrees with pydicom's apply_windowing for LINEAR (widths
    down to the step of width 1) and LINEAR_EXACT, boundaries included."""
    from pydicom.pixels import apply_windowing

    hu = np.concatenate([np.arange(-1024, 3072, 0.5), [39.5, 40.0, 40.5, -160.0, 240.0]])
    voi = Dataset()
    voi.PhotometricInterpretation, voi.BitsStored, voi.PixelRepresentation = "MONOCHROME2", 1, 0
    for function, center, width in [("LINEAR", 40, 400), ("LINEAR", -600, 1500), ("LINEAR", 40, 1),
                                    ("LINEAR", 40.25, 2), ("LINEAR_EXACT", 40, 400),
                                    ("LINEAR_EXACT", 40, 0.5)]:
        voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = center, width, function
        want = apply_windowing(hu.copy(), voi)
        got = _linear_window(hu, center, width, function, "x.dcm")
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"{function} {center}/{width}")
    with pytest.raises(DataError, match="x.dcm.*width must be >= 1"):
        _linear_window(hu, 40, 0.5, "LINEAR", "x.dcm")
    path = hu_file(tmp_path, [-500, 0, 40, 80, 500], WindowCenter=40, WindowWidth=80,
                   VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(read_dicom(path, window="file").image[0, :, 0],
                               [0, 0, 0.5, 1, 1], atol=1e-6)


def test_presets_table_and_multi_window_stacking(tmp_path):
    assert set(WINDOW_PRESETS) == {"lung", "mediastinum", "bone", "brain", "abdomen",
                                   "soft_tissue", "liver", "stroke"}
    assert WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert all(width >= 1 for _, width in WINDOW_PRESETS.values())
    path = hu_file(tmp_path, np.linspace(-1200, 2000, 33), PixelSpacing=[1, 1])
    stack = read_dicom(path, window=["lung", "mediastinum", "bone"])
    assert stack.image.shape == (1, 33, 3) and stack.image.dtype == np.float32
    assert stack.channel_names == ("lung", "mediastinum", "bone")
    assert stack.image.min() >= 0 and stack.image.max() <= 1
    for k, name in enumerate(stack.channel_names):
        single = read_dicom(path, window=name).image[..., 0]
        np.testing.assert_array_equal(stack.image[..., k], single)
    # Lung (-600/1500) saturates at a lower HU than bone (400/1800).
    assert stack.image[0, :, 0].argmax() < stack.image[0, :, 2].argmax()
    pair = read_dicom(path, window=[[40, 400], "brain"])
    assert pair.channel_names == ("c40_w400", "brain")


def test_window_option_parsing():
    assert parse_windows(None) is None and parse_windows("none") is None
    assert [w.name for w in parse_windows((40, 400))] == ["c40_w400"]
    assert [w.name for w in parse_windows([-600, 1500])] == ["c-600_w1500"]
    assert [w.name for w in parse_windows(["lung", [40, 400], "file"])] == ["lung", "c40_w400",
                                                                             "file"]
    for bad in ("lungs", (40, 0), [], ["lung", None], 3):
        with pytest.raises(DataError, match="window"):
            parse_windows(bad)


def test_file_window_sigmoid_and_voi_lut(tmp_path):
    hu = np.array([-500, 0, 40, 80, 500])
    path = hu_file(tmp_path, hu, WindowCenter=40, WindowWidth=400)
    np.testing.assert_array_equal(read_dicom(path, window="file").image,
                                  read_dicom(path, window=(40, 400)).image)

    path = hu_file(tmp_path, hu, WindowCenter=40, WindowWidth=80, VOILUTFunction="SIGMOID")
    out = read_dicom(path, window="file").image[0, :, 0]
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-4 * (hu - 40) / 80)), atol=1e-6)
    assert out[2] == pytest.approx(0.5)

    # A VOI LUT (preferred over a window, as in pydicom): an 8-bit inverting table.
    stored = np.arange(256, dtype=np.uint8).reshape(16, 16)
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.add_new("LUTData", "US", list(range(255, -1, -1)))  # the VR is ambiguous (US/OW)
    path = write_dicom(tmp_path / "lut.dcm", stored, modality="OT", VOILUTSequence=[lut],
                       WindowCenter=128, WindowWidth=256)
    out = read_dicom(path, window="file").image[..., 0]
    np.testing.assert_allclose(out, (255 - stored) / 255.0, atol=1e-7)


# ---- photometric interpretations and bit depths ----------------------------------------------
def test_monochrome1_is_inverted(tmp_path):
    stored = np.array([[0, 100, 255]], dtype=np.uint8)
    mono2 = write_dicom(tmp_path / "m2.dcm", stored, modality="OT")
    mono1 = write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", modality="OT")
    np.testing.assert_array_equal(read_dicom(mono2).image[..., 0], stored)
    # Raw values are mirrored inside the stored range, so higher still means brighter.
    np.testing.assert_array_equal(read_dicom(mono1).image[..., 0], 255.0 - stored)
    windowed = read_dicom(mono1, window=(128, 256)).image
    np.testing.assert_allclose(windowed, 1 - read_dicom(mono2, window=(128, 256)).image)
    assert windowed[0, 0, 0] == 1.0 and windowed[0, 2, 0] == 0.0
    assert read_dicom(mono1).photometric == "MONOCHROME1"


def test_rgb_and_ybr_full(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    img = read_dicom(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", modality="OT"))
    assert img.image.shape == (8, 10, 3) and img.channel_names == ("red", "green", "blue")
    np.testing.assert_array_equal(img.image, rgb / np.float32(255))

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    img = read_dicom(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL", modality="OT"))
    assert img.photometric == "YBR_FULL"
    # YBR_FULL -> RGB by pydicom; 8-bit round trips are off by a rounding step at most.
    assert np.abs(img.image * 255 - rgb).max() <= 2.5

    with pytest.raises(DataError, match="colour image") as err:
        read_dicom(tmp_path / "rgb.dcm", window="lung")
    assert "window: none" in str(err.value) and "rgb.dcm" in str(err.value)


def test_ybr_full_422_and_palette_bundled():
    img = read_dicom(bundled("SC_ybr_full_422_uncompressed.dcm"))
    assert img.image.shape == (100, 100, 3) and img.photometric == "YBR_FULL_422"
    assert 0 <= img.image.min() and img.image.max() <= 1
    palette = read_dicom(bundled("examples_palette.dcm"))
    assert palette.image.shape == (350, 800, 3) and palette.photometric == "PALETTE COLOR"
    assert 0 <= palette.image.min() and palette.image.max() <= 1


def test_signed_8bit_and_12bit_data(tmp_path):
    signed = np.array([[-32768, -1000, 0, 1000, 32767]], dtype=np.int16)
    path = write_dicom(tmp_path / "s16.dcm", signed, modality="MR")
    np.testing.assert_array_equal(read_dicom(path).image[..., 0], signed)
    path = write_dicom(tmp_path / "s16m1.dcm", signed, "MONOCHROME1", modality="MR")
    # Mirrored in [-32768, 32767]: x -> -1 - x.
    np.testing.assert_array_equal(read_dicom(path).image[..., 0], -1.0 - signed)

    eight = np.array([[0, 17, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(
        read_dicom(write_dicom(tmp_path / "u8.dcm", eight, modality="OT")).image[..., 0], eight)

    # 12 bits stored in 16 allocated: the 4 unused high bits (overlay garbage here) are ignored.
    path = write_dicom(tmp_path / "u12.dcm", np.array([[100, 4095]], dtype=np.uint16),
                       bits_stored=12, modality="OT")
    ds = pydicom.dcmread(path)
    ds.PixelData = np.array([[0xF000 | 100, 4095]], dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read_dicom(path).image[..., 0], [[100, 4095]])
    # Signed 12-bit: the sign bit is bit 11.
    path = write_dicom(tmp_path / "s12.dcm", np.array([[-2048, -5, 2047]], dtype=np.int16),
                       bits_stored=12, modality="OT")
    np.testing.assert_array_equal(read_dicom(path).image[..., 0], [[-2048, -5, 2047]])


# ---- frames, functional groups and spacing ---------------------------------------------------
def test_multiframe_selection(tmp_path):
    frames = np.stack([np.full((4, 6), 10 * i, dtype=np.uint8) for i in range(5)])
    path = write_dicom(tmp_path / "mf.dcm", frames, modality="OT")
    assert count_frames(path) == 5 and dicom_meta(path)["NumberOfFrames"] == 5
    middle = read_dicom(path)
    assert middle.frame == 2 and middle.image.shape == (4, 6, 1) and middle.image[0, 0, 0] == 20
    assert read_dicom(path, frame=0).image.max() == 0
    assert read_dicom(path, frame=-1).frame == 4
    everything = read_dicom(path, frame="all")
    assert everything.frame is None and everything.num_frames == 5
    assert everything.image.shape == (5, 4, 6, 1)
    np.testing.assert_array_equal(everything.image[:, 0, 0, 0], [0, 10, 20, 30, 40])
    with pytest.raises(DataError, match="out of range") as err:
        read_dicom(path, frame=5)
    assert "mf.dcm" in str(err.value) and "0..4" in str(err.value)
    with pytest.raises(DataError, match="'middle' or 'all'"):
        read_dicom(path, frame="first")

    rgb = read_dicom(bundled("SC_rgb_rle_2frame.dcm"), frame="all")
    assert rgb.image.shape == (2, 100, 100, 3)


def test_enhanced_functional_groups(tmp_path):
    """Enhanced multi-frame files keep rescale and spacing per frame in functional groups."""
    frames = np.full((3, 4, 4), 100, dtype=np.uint16)
    ds_path = write_dicom(tmp_path / "enh.dcm", frames, modality="CT")
    ds = pydicom.dcmread(ds_path)
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.25]
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for i in range(3):
        transform = Dataset()
        transform.RescaleSlope = 1
        transform.RescaleIntercept = -1000 * i
        transform.RescaleType = "HU"
        group = Dataset()
        group.PixelValueTransformationSequence = [transform]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.save_as(ds_path, enforce_file_format=True)
    img = read_dicom(ds_path, frame="all")
    np.testing.assert_array_equal(img.image[:, 0, 0, 0], [100, -900, -1900])
    assert img.pixel_spacing == (0.5, 0.25)
    assert dicom_meta(ds_path)["PixelSpacing"] == [0.5, 0.25]


def test_resampling_to_target_spacing(tmp_path):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 1000, (20, 40), dtype=np.uint16)
    hu = stored.astype(np.float64) - 500
    path = write_dicom(tmp_path / "sp.dcm", stored, PixelSpacing=[0.5, 0.25], RescaleSlope=1,
                       RescaleIntercept=-500)
    down = read_dicom(path, target_spacing=1.0)
    assert down.image.shape == (10, 10, 1) and down.pixel_spacing == (1.0, 1.0)
    # Bilinear with antialiasing never leaves the input range.
    assert down.image.min() >= hu.min() and down.image.max() <= hu.max()
    assert down.image.mean() == pytest.approx(hu.mean(), abs=5)
    up = read_dicom(path, target_spacing=(0.25, 0.25), window=["lung", "bone"])
    assert up.image.shape == (40, 40, 2) and up.pixel_spacing == (0.25, 0.25)
    same = read_dicom(path, target_spacing=[0.5, 0.25])
    np.testing.assert_array_equal(same.image[..., 0], hu)
    odd = read_dicom(path, target_spacing=0.3)  # 20*0.5/0.3 = 33.3 rows -> 33
    assert odd.image.shape == (33, 33, 1)
    assert odd.pixel_spacing == pytest.approx((20 * 0.5 / 33, 40 * 0.25 / 33))
    frames = write_dicom(tmp_path / "sp3.dcm", np.zeros((3, 8, 8), np.uint8), modality="OT",
                         PixelSpacing=[1, 1])
    assert read_dicom(frames, frame="all", target_spacing=2).image.shape == (3, 4, 4, 1)

    nospacing = write_dicom(tmp_path / "nosp.dcm", stored)
    with pytest.raises(DataError, match="target_spacing: null") as err:
        read_dicom(nospacing, target_spacing=1.0)
    assert "nosp.dcm" in str(err.value)
    with pytest.raises(DataError, match="target_spacing"):
        read_dicom(path, target_spacing=-1)


# ---- transfer syntaxes (pydicom's bundled files) ---------------------------------------------
CODEC_FILES = [
    # (file, transfer syntax, shape, plugins that can decode it: None = any available)
    ("CT_small.dcm", uid.ExplicitVRLittleEndian, (128, 128, 1), None),
    ("MR_small_implicit.dcm", uid.ImplicitVRLittleEndian, (64, 64, 1), None),
    ("MR_small_bigendian.dcm", uid.ExplicitVRBigEndian, (64, 64, 1), None),
    ("image_dfl.dcm", uid.DeflatedExplicitVRLittleEndian, (512, 512, 1), None),
    ("SC_rgb_jpeg_dcmtk.dcm", uid.JPEGBaseline8Bit, (100, 100, 3), None),
    ("JPGExtended.dcm", uid.JPEGExtended12Bit, (1024, 256, 1), {"pylibjpeg"}),
    ("SC_rgb_jpeg_gdcm.dcm", uid.JPEGLosslessSV1, (100, 100, 3), None),
    ("MR_small_jpeg_ls_lossless.dcm", uid.JPEGLSLossless, (64, 64, 1), None),
    ("JPEGLSNearLossless_16.dcm", uid.JPEGLSNearLossless, (50, 10, 1), None),
    ("MR_small_jp2klossless.dcm", uid.JPEG2000Lossless, (64, 64, 1), None),
    ("JPEG2000.dcm", uid.JPEG2000, (1024, 256, 1), None),
    ("MR_small_RLE.dcm", uid.RLELossless, (64, 64, 1), None),
    ("SC_rgb_rle.dcm", uid.RLELossless, (100, 100, 3), None),
]


def skip_without_decoder(ts: uid.UID, plugins: set[str] | None = None) -> None:
    decoder = get_decoder(ts)
    if not decoder.is_available:
        pytest.skip(f"no decoder installed for {ts.name}: "
                    f"{' or '.join(dicom_module.DECODER_PACKAGES.get(ts, ()))}")
    if plugins and not plugins & set(decoder.available_plugins):
        pytest.skip(f"{ts.name} needs one of the plugins {sorted(plugins)}")


@pytest.mark.parametrize(("name", "ts", "shape", "plugins"), CODEC_FILES,
                         ids=[f[0] for f in CODEC_FILES])
def test_bundled_transfer_syntaxes_decode(name, ts, shape, plugins):
    path = bundled(name)
    skip_without_decoder(ts, plugins)
    img = read_dicom(path)
    assert img.transfer_syntax_uid == ts
    assert img.image.dtype == np.float32 and img.image.shape == shape
    assert np.isfinite(img.image).all()
    assert dicom_meta(path)["TransferSyntaxUID"] == ts


LOSSLESS_MR = ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm",
               "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]


@pytest.mark.parametrize("name", LOSSLESS_MR)
def test_lossless_variants_equal_uncompressed(name):
    reference = read_dicom(bundled("MR_small.dcm"))
    path = bundled(name)
    skip_without_decoder(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    np.testing.assert_array_equal(read_dicom(path).image, reference.image)


def test_lossless_jpeg_equals_rle_rgb():
    skip_without_decoder(uid.JPEGLosslessSV1)
    np.testing.assert_array_equal(read_dicom(bundled("SC_rgb_jpeg_gdcm.dcm")).image,
                                  read_dicom(bundled("SC_rgb_rle.dcm")).image)


@pytest.mark.parametrize("ts", [uid.RLELossless, uid.JPEG2000Lossless])
def test_compressed_signed_ct_round_trip(tmp_path, ts):
    if not get_encoder(ts).is_available:
        pytest.skip(f"no encoder for {ts.name}")
    skip_without_decoder(ts)
    # 32 x 32: OpenJPEG's default 6 resolution levels need a minimum image size.
    stored = np.random.default_rng(2).integers(-1024, 3072, (32, 32)).astype(np.int16)
    path = write_dicom(tmp_path / "raw.dcm", stored, RescaleSlope=1, RescaleIntercept=0)
    ds = pydicom.dcmread(path)
    ds.compress(ts)
    ds.save_as(tmp_path / "packed.dcm", enforce_file_format=True)
    packed = read_dicom(tmp_path / "packed.dcm", window=["lung", "bone"])
    assert packed.transfer_syntax_uid == ts
    np.testing.assert_array_equal(packed.image, read_dicom(path, window=["lung", "bone"]).image)


# ---- bad input -------------------------------------------------------------------------------
def test_missing_path_and_directory(tmp_path):
    missing = tmp_path / "nope.dcm"
    with pytest.raises(DataError, match="does not exist") as err:
        read_dicom(missing)
    assert str(missing) in str(err.value) and "fix the path" in str(err.value)
    with pytest.raises(DataError, match="is a directory"):
        count_frames(tmp_path)


def test_not_a_dicom_file(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not an image\n" * 20)
    for reader in (read_dicom, dicom_meta, count_frames):
        with pytest.raises(DataError, match="not a DICOM file") as err:
            reader(path)
        assert str(path) in str(err.value) and "remove it" in str(err.value)


def test_headerless_file_needs_force(tmp_path):
    ds = Dataset()
    ds.Modality = "OT"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.set_pixel_data(np.arange(12, dtype=np.uint8).reshape(3, 4), "MONOCHROME2", 8)
    del ds.file_meta
    path = tmp_path / "raw.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    with pytest.raises(DataError, match="force=True"):
        read_dicom(path)
    img = read_dicom(path, force=True)
    assert img.transfer_syntax_uid == uid.ImplicitVRLittleEndian
    np.testing.assert_array_equal(img.image[..., 0], np.arange(12).reshape(3, 4))


def test_no_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", np.zeros((2, 2), np.uint8), modality="OT")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError, match="has no pixel data") as err:
        read_dicom(path)
    assert str(path) in str(err.value) and "remove it from the list" in str(err.value)
    assert dicom_meta(path)["Rows"] == 2  # the header alone is still readable


def test_truncated_files(tmp_path):
    stored = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = write_dicom(tmp_path / "full.dcm", stored, modality="OT", ImageComments="x" * 400)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 1000])  # inside the pixel data
    with pytest.raises(DataError, match="truncated") as err:
        read_dicom(cut)
    assert str(cut) in str(err.value) and "replace it" in str(err.value)
    cut.write_bytes(data[: data.index(b"x" * 400) + 200])  # inside a header element
    with pytest.raises(DataError, match="truncated"):
        read_dicom(cut)
    with pytest.raises(DataError, match="truncated"):
        read_dicom(bundled("MR_truncated.dcm"))


def test_missing_decoder_names_the_package(monkeypatch):
    path = bundled("MR_small_jp2klossless.dcm")
    # As if no JPEG 2000 plugin were installed.
    monkeypatch.setattr(get_decoder(uid.JPEG2000Lossless), "_available", {})
    with pytest.raises(DataError) as err:
        read_dicom(path)
    message = str(err.value)
    assert path in message
    assert "JPEG 2000 Image Compression (Lossless Only)" in message and uid.JPEG2000Lossless in message
    assert "convnext-domains[medical]" in message and "pylibjpeg-openjpeg" in message


def test_decoder_failure_and_unsupported_syntax(tmp_path):
    path = bundled("JPEG-lossy.dcm")  # a corrupt 12-bit JPEG stream: every decoder fails
    with pytest.raises(DataError) as err:
        read_dicom(path)
    assert path in str(err.value) and "pip install" in str(err.value)

    mpeg = write_dicom(tmp_path / "mpeg.dcm", np.zeros((4, 4), np.uint8), modality="OT")
    ds = pydicom.dcmread(mpeg)
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 12])
    ds["PixelData"].VR = "OB"
    ds.save_as(mpeg, enforce_file_format=True)
    with pytest.raises(DataError, match="no decoder for its transfer syntax") as err:
        read_dicom(mpeg)
    assert str(mpeg) in str(err.value) and "MPEG2" in str(err.value)


def test_malformed_palette(tmp_path):
    path = write_dicom(tmp_path / "pal.dcm", np.zeros((4, 4), np.uint8), "PALETTE COLOR",
                       modality="OT")  # no palette lookup tables
    with pytest.raises(DataError, match="cannot convert the pixel values") as err:
        read_dicom(path)
    assert "pal.dcm" in str(err.value) and "fix or replace" in str(err.value)


def test_file_window_missing(tmp_path):
    path = hu_file(tmp_path, np.array([0, 1]))
    with pytest.raises(DataError, match="window 'file'") as err:
        read_dicom(path, window="file")
    assert "hu.dcm" in str(err.value) and "preset" in str(err.value)


# ---- privacy ---------------------------------------------------------------------------------
def test_patient_identifiers_never_leave_the_reader(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    path = write_dicom(tmp_path / "patient.dcm", np.ones((4, 4), np.int16), modality="CT",
                       RescaleSlope=1, RescaleIntercept=-1024, PixelSpacing=[1, 1], **PATIENT)
    secrets = list(PATIENT.values()) + ["Doe", "Janette"]

    def leaks(text: str) -> list[str]:
        return [s for s in secrets if s in text]

    img = read_dicom(path, window=["lung", "bone"], target_spacing=0.5)
    assert not leaks(repr(img)) and not leaks(str(vars(img)))
    meta = dicom_meta(path)
    assert set(meta) == {"SOPInstanceUID", "Modality", "Rows", "Columns", "NumberOfFrames",
                         "PixelSpacing", "PhotometricInterpretation", "TransferSyntaxUID"}
    assert not leaks(repr(meta))

    # A library message quoting an identifier is scrubbed before it reaches the error.
    def failing(*args, **kwargs):
        raise ValueError(f"bad frame for {PATIENT['PatientName']} / {PATIENT['PatientID']}")

    monkeypatch.setattr(dicom_module, "pixel_array", failing)
    with pytest.raises(DataError) as err:
        read_dicom(path)
    assert "[redacted]" in str(err.value) and not leaks(str(err.value))
    monkeypatch.undo()

    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(DataError) as err:
        read_dicom(path)
    assert str(path) in str(err.value) and not leaks(str(err.value))
    assert not leaks(caplog.text)


def test_identifier_tag_names_are_dicom_keywords():
    assert {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
            "OtherPatientIDs", "PatientAddress"} <= PATIENT_IDENTIFIER_TAGS
    assert all(tag_for_keyword(k) is not None for k in PATIENT_IDENTIFIER_TAGS)


def test_scrub_handles_raw_and_converted_values():
    ds = Dataset()
    ds.PatientName = "Doe^Janette"
    ds.OtherPatientIDs = ["OTHER-4242", "OTHER-5353"]
    ds.PatientID = "PID-98765"
    text = "Doe^Janette Janette OTHER-4242 OTHER-5353 PID-98765 stays"
    assert dicom_module._scrub(text, ds) == " ".join(["[redacted]"] * 5 + ["stays"])
