"""Writing small DICOM files with pydicom for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

PATIENT = {
    "PatientName": "Doe^Janette",
    "PatientID": "PID-98765",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-55555",
    "OtherPatientIDs": "OTHER-4242",
}


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None, modality: str = "CT", **attrs) -> Path:
    """A minimal valid DICOM file (Explicit VR Little Endian) holding ``pixels``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.CTImageStorage if modality == "CT" else uid.SecondaryCaptureImageStorage
    ds.Modality = modality
    ds.set_pixel_data(pixels, photometric, bits_stored or pixels.dtype.itemsize * 8)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def patient_identity(i: int) -> dict[str, str]:
    """Distinctive identifiers for synthetic patient ``i`` (searched for in privacy tests)."""
    return {"PatientName": f"Testperson^Zelda{i:02d}", "PatientID": f"ZZPID{i:05d}",
            "PatientBirthDate": f"1931{(i % 12) + 1:02d}17", "AccessionNumber": f"ZZACC{i:05d}"}


def make_ct_study(root: Path, n_patients: int = 8, per_patient: int = 3, size: int = 32,
                  seed: int = 0) -> dict[str, Path]:
    """Synthetic CT slices with identifiers; 'contrast' patients have a bright round blob.

    Writes ``slices/p{i}_{j}.dcm`` (file names carry no identifier), PNG masks of the blob,
    ``labels.csv`` (path,label,patient_id) and ``masks.csv`` (path,mask,patient_id).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "slices").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    labels, masks = ["path,label,patient_id"], ["path,mask,patient_id"]
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_patients):
        contrast = i % 2 == 1
        who = patient_identity(i)
        for j in range(per_patient):
            hu = rng.normal(40, 20, (size, size))
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2
            if contrast:
                hu[blob] = 300
            stored = np.clip(hu + 1024, 0, 4095).astype(np.uint16)
            name = f"p{i}_{j}"
            write_dicom(root / "slices" / f"{name}.dcm", stored, bits_stored=12, RescaleSlope=1,
                        RescaleIntercept=-1024, PixelSpacing=[0.8, 0.8], WindowCenter=40,
                        WindowWidth=400, SOPInstanceUID=f"1.2.826.0.1.3680043.2.1125.{i}.{j}",
                        StudyInstanceUID=f"1.2.826.0.1.3680043.2.1126.{i}",
                        SeriesInstanceUID=f"1.2.826.0.1.3680043.2.1127.{i}",
                        FrameOfReferenceUID=f"1.2.826.0.1.3680043.2.1128.{i}",
                        ImagePositionPatient=[0, 0, float(j)], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                        SliceThickness=1, **who)
            Image.fromarray((blob & contrast).astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
            labels.append(f"slices/{name}.dcm,{'contrast' if contrast else 'plain'},{who['PatientID']}")
            masks.append(f"slices/{name}.dcm,masks/{name}.png,{who['PatientID']}")
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    (root / "masks.csv").write_text("\n".join(masks) + "\n")
    return {"labels": root / "labels.csv", "masks": root / "masks.csv", "slices": root / "slices"}


# ---- DICOM SEG test data -----------------------------------------------------------------------
def write_series(folder: Path, pixels: list[np.ndarray], spacing=(0.5, 0.5), prefix: str = "img",
                 **attrs) -> list[Path]:
    """Single-frame CT slices of one series with the study/patient modules a DICOM SEG copies."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_reference = uid.generate_uid(), uid.generate_uid(), uid.generate_uid()
    common = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "FrameOfReferenceUID": frame_of_reference,
              "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "SliceThickness": 1, "PixelSpacing": list(spacing),
              "StudyID": "1", "SeriesNumber": 1, "StudyDate": "20240101", "StudyTime": "120000",
              "ReferringPhysicianName": "", "PatientSex": "O", "PatientOrientation": "",
              **patient_identity(7), **attrs}
    paths = []
    for k, px in enumerate(pixels):
        paths.append(write_dicom(folder / f"{prefix}{k}.dcm", px, bits_stored=12, RescaleSlope=1,
                                 RescaleIntercept=-1024, SOPInstanceUID=uid.generate_uid(),
                                 ImagePositionPatient=[0, 0, float(k)], InstanceNumber=k + 1, **common))
    return paths


def write_seg_highdicom(path: Path, sources: list[Path], masks: np.ndarray) -> Path:
    """A binary DICOM SEG made by highdicom: ``masks`` is bool (slices, H, W, segments)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="test", version="1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=k + 1, segment_label=f"segment{k + 1}", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm) for k in range(masks.shape[-1])]
    seg = hd.seg.Segmentation(
        source_images=[pydicom.dcmread(p) for p in sources], pixel_array=masks, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1")
    seg.save_as(path)
    return path


def _code(value: str, meaning: str, scheme: str = "DCM") -> Dataset:
    """A coded concept item (CodeValue, CodingSchemeDesignator, CodeMeaning)."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def write_seg_vendor(path: Path, source: Path, frames: list[tuple[int, int | None, np.ndarray]],
                     segments: int, spatial_locations_preserved: str | None = None) -> Path:
    """A DICOM SEG built with plain pydicom, the way other vendors write them.

    Args:
        source: the referenced image (single- or multi-frame).
        frames: per SEG frame ``(segment number, 1-based source frame or None, bool HxW)``;
            each frame references the source in its Derivation Image Sequence.
        segments: number of segments described.
        spatial_locations_preserved: YES/NO in each frame's source reference; None omits it
            (common in vendor SEGs).
    """
    import pydicom
    from pydicom.pixels import pack_bits

    src = pydicom.dcmread(source, stop_before_pixels=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "FrameOfReferenceUID"):
        if keyword in src:
            setattr(ds, keyword, src.get(keyword))
    ds.SeriesInstanceUID = uid.generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SEG", 300, 1
    ds.Manufacturer, ds.ContentLabel, ds.ContentDescription = "OtherVendor", "SEG", ""
    ds.ContentCreatorName, ds.ContentDate, ds.ContentTime = "", "20240101", "120000"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SegmentationType = "BINARY"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = frames[0][2].shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.LossyImageCompression = "00"
    ds.NumberOfFrames = len(frames)
    ds.PixelData = pack_bits(np.stack([f[2] for f in frames]).astype(np.uint8))

    described = []
    for k in range(1, segments + 1):
        item = Dataset()
        item.SegmentNumber, item.SegmentLabel, item.SegmentAlgorithmType = k, f"organ{k}", "MANUAL"
        item.SegmentedPropertyCategoryCodeSequence = [_code("85756007", "Tissue", "SCT")]
        item.SegmentedPropertyTypeCodeSequence = [_code("85756007", "Tissue", "SCT")]
        described.append(item)
    ds.SegmentSequence = described

    dim_uid = uid.generate_uid()
    index = Dataset()  # frames are indexed by segment number only: one source image
    index.DimensionOrganizationUID = dim_uid
    index.DimensionIndexPointer = 0x0062000B  # ReferencedSegmentNumber
    index.FunctionalGroupPointer = 0x0062000A  # SegmentIdentificationSequence
    dims = [index]
    organization = Dataset()
    organization.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = [organization]
    ds.DimensionIndexSequence = dims

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = src.get("PixelSpacing", [1, 1])
    measures.SliceThickness = src.get("SliceThickness", 1)
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]

    per_frame = []
    for segment, source_frame, _ in frames:
        reference = Dataset()
        reference.ReferencedSOPClassUID = src.SOPClassUID
        reference.ReferencedSOPInstanceUID = src.SOPInstanceUID
        if source_frame is not None:
            reference.ReferencedFrameNumber = source_frame
        if spatial_locations_preserved is not None:
            reference.SpatialLocationsPreserved = spatial_locations_preserved
        reference.PurposeOfReferenceCodeSequence = [
            _code("121322", "Source image for image processing operation")]
        derivation = Dataset()
        derivation.SourceImageSequence = [reference]
        derivation.DerivationCodeSequence = [_code("113076", "Segmentation")]
        content = Dataset()
        content.DimensionIndexValues = [segment]
        identification = Dataset()
        identification.ReferencedSegmentNumber = segment
        item = Dataset()
        item.DerivationImageSequence = [derivation]
        item.FrameContentSequence = [content]
        item.SegmentIdentificationSequence = [identification]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame

    instance = Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = src.SOPClassUID, src.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = src.SeriesInstanceUID
    series.ReferencedInstanceSequence = [instance]
    ds.ReferencedSeriesSequence = [series]
    ds.save_as(path, enforce_file_format=True)
    return path
