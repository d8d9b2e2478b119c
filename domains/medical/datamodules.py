"""Medical datamodules: DICOM manifests or class folders, patient-level splits, bad-file reports."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.data import (
    ConvNeXtDataModule,
    DataError,
    SampleSource,
    read_manifest,
    scan_class_folders,
)
from core.filescan import log_skipped
from domains.medical.contract import DicomContract, prediction_frame
from domains.medical.dicom import count_frames, dicom_meta, read_dicom
from domains.medical.masks import (
    SegmentOverlap,
    SourceImage,
    is_dicom_file,
    read_mask,
    source_image,
)
from domains.medical.plugin import DICOM, DICOM_EXTENSIONS
from domains.medical.prediction import PREDICT_FORMATS, PredictFormat

log = logging.getLogger(__name__)

Window = str | list[float] | list[str | list[float]] | None


# Patient keys are only compared with each other to keep a patient in one split. A keyed hash
# with a per-process random key keeps them unreadable and unguessable even in memory dumps.
_PSEUDONYM_KEY = secrets.token_bytes(32)


def _pseudonym(value: str) -> str:
    return hmac.new(_PSEUDONYM_KEY, value.encode(), hashlib.sha256).hexdigest()[:16]


def patient_from_header(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception as err:  # any reader failure is reported by path only
        raise DataError(f"cannot read the DICOM header of '{path}' to group by patient ({type(err).__name__}); "
                        "give a patient column in the manifest or fix the file") from err
    value = str(ds.get("PatientID", "") or "")
    if not value:
        raise DataError(f"'{path}' has no PatientID; give a patient column in the manifest so "
                        "patient-level splits are possible")
    return _pseudonym(value)


def series_files(path: Path) -> list[Path]:
    """A file, or every file of a series folder."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DICOM_EXTENSIONS)
        if not files:
            raise DataError(f"series folder '{path}' holds no DICOM files")
        return files
    return [path]


class DicomSource(SampleSource):
    """DICOM samples: one per file, per frame, or per slice of a series."""

    def __init__(self, paths: list[Path], frames: list[int | str], labels: np.ndarray, ids: list[str],
                 read_args: dict[str, Any], **facts: Any) -> None:
        self.paths, self.frames = [str(p) for p in paths], frames
        self.read_args = read_args
        super().__init__(ids, labels, **facts)

    def read_image(self, index: int) -> np.ndarray:
        return read_dicom(self.paths[index], frame=self.frames[index], **self.read_args).image


class DicomDataModule(ConvNeXtDataModule):
    """DICOM classification data with patient-level splits.

    Either a CSV ``manifest`` (a path column naming DICOM files or series folders, label
    column(s), a patient column) or ``root`` with one sub-folder of DICOMs per class.
    No patient identifier is ever logged or written: patient keys are hashed and used only
    to keep each patient's images in one split.

    Args:
        manifest: CSV file; relative paths are resolved against its folder.
        root: class-folder layout instead of a manifest (patients from the DICOM headers).
        path_column: manifest column with the file or series-folder path.
        label_columns: one column (binary/multiclass: its values are the classes) or several
            0/1 columns (multilabel: the columns are the classes).
        patient_column: manifest column with the patient key; ``null`` reads PatientID from
            the DICOM headers.
        class_order: order of the label values, i.e. the class names (default sorted).
        positive_classes: classes whose probability is the score of the binary decision.
        window: ``file`` (the file's VOI LUT/window), a preset (lung, mediastinum, bone,
            brain, abdomen, ...), ``[center, width]``, a list of those (one channel each), or
            ``null`` (modality values, e.g. HU).
        frames: multi-frame files: a frame index, ``middle`` or ``all`` (every frame a sample).
            (Not ``frame``: Lightning's hyperparameter capture drops an argument of that name.)
        series_slices: series folders: ``middle`` slice or ``all`` slices as samples.
        target_spacing: resample to this pixel spacing in mm (``null`` keeps the native one).
        on_bad_file: ``error`` stops at the first unreadable file; ``skip`` checks every file
            once at setup, leaves out the bad ones and reports them (log and
            ``skipped_files.csv`` in the run directory).
        id_field: key of predictions: ``path`` or ``sop_instance_uid``.
        **kwargs: options of :class:`~core.data.ConvNeXtDataModule`.
    """

    file_extensions = DICOM_EXTENSIONS

    def __init__(
        self,
        manifest: str | None = None,
        root: str | None = None,
        path_column: str = "path",
        label_columns: list[str] | None = None,
        patient_column: str | None = "patient_id",
        class_order: list[str] | None = None,
        positive_classes: list[str] | None = None,
        window: Window = None,
        frames: int | Literal["middle", "all"] = "middle",
        series_slices: Literal["middle", "all"] = "middle",
        target_spacing: float | None = None,
        on_bad_file: Literal["error", "skip"] = "error",
        id_field: Literal["path", "sop_instance_uid"] = "path",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (manifest is None) == (root is None):
            raise DataError("give exactly one of data.init_args.manifest (CSV) or data.init_args.root "
                            "(one sub-folder of DICOMs per class)")

    # -- building the sample list --
    @property
    def multilabel(self) -> bool:
        return len(self.hparams.label_columns or ["label"]) > 1

    def target_columns(self) -> list[str]:
        """Manifest columns holding the targets."""
        return list(self.hparams.label_columns or ["label"])

    def raw_target(self, row: dict[str, str], base: Path) -> Any:
        """The target of a manifest row, before encoding."""
        columns = self.target_columns()
        return [row[c].strip() for c in columns] if len(columns) > 1 else row[columns[0]].strip()

    def _rows(self) -> tuple[list[Path], list[Any], list[str]]:
        """(paths, raw targets, patient keys) from the manifest or the class folders."""
        h = self.hparams
        if h.root is not None:
            files, names, _ = scan_class_folders(h.root, (".dcm", ".dicom", ".ima"))
            return files, names, [patient_from_header(f) for f in files]
        required = [h.path_column, *self.target_columns()] + ([h.patient_column] if h.patient_column else [])
        rows = read_manifest(h.manifest, required)
        base = Path(h.manifest).expanduser().parent
        paths, targets, patients = [], [], []
        for line, row in enumerate(rows, start=2):
            path = Path(row[h.path_column]).expanduser()
            path = path if path.is_absolute() else base / path
            try:
                if not path.exists():
                    raise DataError(f"manifest row {line} names '{row[h.path_column]}', which does not "
                                    f"exist (looked at {path}); fix the path, delete the row or set "
                                    "on_bad_file: skip")
                target = self.raw_target(row, base)
            except DataError as err:
                if h.on_bad_file == "skip":
                    self.skipped.append((str(path), str(err)))
                    continue
                raise
            files = series_files(path) if h.series_slices == "all" or not path.is_dir() else [self._middle(path)]
            for file in files:
                paths.append(file)
                targets.append(target)
                patients.append(_pseudonym(row[h.patient_column].strip()) if h.patient_column
                                else patient_from_header(file))
        return paths, targets, patients

    @staticmethod
    def _middle(folder: Path) -> Path:
        import pydicom

        files = series_files(folder)

        def position(f: Path) -> float:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["InstanceNumber"])
            return float(ds.get("InstanceNumber", 0) or 0)

        return sorted(files, key=position)[len(files) // 2]

    def _encode(self, raw: list[Any]) -> tuple[np.ndarray, list[str]]:
        """Class indices (or multi-hot rows) of the raw targets, and the class names."""
        h = self.hparams
        if self.multilabel:
            try:
                return np.array([[int(float(v)) for v in r] for r in raw], dtype=np.int64), list(h.label_columns)
            except ValueError as err:
                raise DataError(f"multilabel columns {h.label_columns} must hold 0/1 values ({err})") from err
        values = sorted(set(raw))
        names = [str(c) for c in h.class_order] if h.class_order else values
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise DataError(f"labels {unknown} are not in class_order {names}; add them or fix the rows")
        if len(names) < 2:
            raise DataError(f"only one class ({names}) in the labels; a classifier needs two or more")
        return np.array([names.index(v) for v in raw], dtype=np.int64), names

    def _read_args(self) -> dict[str, Any]:
        h = self.hparams
        return {"window": h.window, "target_spacing": h.target_spacing}

    def build_source(self) -> DicomSource:
        """One sample per file, frame or series slice; patients are the split groups."""
        h = self.hparams
        paths, raw, patients = self._rows()
        keep_paths, frames, keep_raw, keep_patients = [], [], [], []
        for path, label, patient in zip(paths, raw, patients, strict=True):
            frame_list: list[int | str] = [h.frames] if h.frames != "all" else list(range(count_frames(path)))
            for frame in frame_list:
                if not self._usable(path, frame):
                    break
                keep_paths.append(path)
                frames.append(frame)
                keep_raw.append(label)
                keep_patients.append(patient)
        self._report_skipped()
        if not keep_paths:
            raise DataError("no readable DICOM files left; see the reasons above")
        ids = [self._sample_id(p, f) for p, f in zip(keep_paths, frames, strict=True)]
        return self.make_source(keep_paths, frames, keep_raw, ids, keep_patients)

    def _usable(self, path: Path, frame: int | str) -> bool:
        """In skip mode, decode once (truncated data only shows when pixels are read)."""
        if self.hparams.on_bad_file != "skip":
            return True
        try:
            read_dicom(path, frame=frame, **self._read_args())
        except DataError as err:
            self.skipped.append((str(path), str(err)))
            return False
        return True

    def _report_skipped(self) -> None:
        log_skipped(self.skipped, "DICOM file")

    def make_source(self, paths: list[Path], frames: list[int | str], targets: list[Any],
                    ids: list[str], patients: list[str]) -> DicomSource:
        """The source of the kept samples; ``patients`` are their (hashed) split groups."""
        labels, classes = self._encode(targets)
        return DicomSource(paths, frames, labels, ids, self._read_args(), class_names=classes,
                           groups=patients)

    def _sample_id(self, path: Path, frame: int | str) -> str:
        if self.hparams.id_field == "sop_instance_uid":
            from domains.medical.dicom import dicom_meta

            key = dicom_meta(path)["SOPInstanceUID"]
        else:
            key = str(path)
        return key if self.hparams.frames != "all" else f"{key}#frame{frame}"

    @property
    def positive_classes(self) -> list[str] | None:
        return self.hparams.positive_classes

    def predict_source(self, paths: list[Path]) -> DicomSource:
        frame = prediction_frame(self.hparams.frames)
        paths = [p for p in paths if self._usable(p, frame)]
        self._report_skipped()
        if not paths:
            raise DataError("none of the predict_paths is a readable DICOM file; see the reasons above")
        frames: list[int | str] = [frame] * len(paths)
        ids = [self._sample_id(p, f) for p, f in zip(paths, frames, strict=True)]
        return DicomPredictSource(paths, frames, np.zeros(len(paths), dtype=np.int64), ids, self._read_args())

    def input_contract(self) -> DicomContract:
        """The DICOM reader's contract: training's window(s), frames and pixel spacing."""
        h = self.hparams
        return DICOM.contract(**self.contract_fields(), window=h.window, frames=h.frames,
                              target_spacing=h.target_spacing)


class DicomMaskSource(DicomSource):
    """DICOM images with a segmentation mask each; ``labels`` says whether it has foreground.

    A sample also carries what HD95 in mm needs: ``spacing`` (row, column mm of the image as
    read, NaN when the header has none) and ``native_mask`` (the mask before any resize).
    """

    def __init__(self, paths: list[Path], frames: list[int | str], masks: list[Path], ids: list[str],
                 read_args: dict[str, Any], mask_values: list[int] | None,
                 segment_overlap: SegmentOverlap = "error", **facts: Any) -> None:
        self.paths, self.frames = [str(p) for p in paths], frames
        self.masks, self.mask_values, self.segment_overlap = [str(m) for m in masks], mask_values, segment_overlap
        self._sources: dict[int, SourceImage] = {}
        foreground = np.array([int((self.read_mask(i) > 0).any()) for i in range(len(masks))])
        super().__init__(paths, frames, foreground, ids, read_args, **facts)

    def source_image(self, index: int) -> SourceImage:
        """The image (SOP Instance UID, frame) whose DICOM SEG frames sample ``index`` uses."""
        if index not in self._sources:
            self._sources[index] = source_image(self.paths[index], self.frames[index])
        return self._sources[index]

    def read_mask(self, index: int) -> np.ndarray:
        mask = Path(self.masks[index])
        source = self.source_image(index) if is_dicom_file(mask) else None
        return read_mask(mask, self.mask_values, source, self.segment_overlap)

    def read(self, index: int) -> dict[str, Any]:
        dicom = read_dicom(self.paths[index], frame=self.frames[index], **self.read_args)
        image = dicom.image
        mask = self.read_mask(index)
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask '{self.masks[index]}' is {mask.shape[1]}x{mask.shape[0]} but image "
                            f"'{self.paths[index]}' is {image.shape[1]}x{image.shape[0]} after reading "
                            "(target_spacing resamples images only: give masks on the resampled grid "
                            "or leave target_spacing unset)")
        spacing = dicom.pixel_spacing or (float("nan"), float("nan"))
        return {"image": image, "mask": mask, "id": self.ids[index],
                "spacing": np.asarray(spacing, dtype=np.float64), "native_mask": mask.astype(np.int16)}


class DicomPredictSource(DicomSource):
    """DICOM images to predict on; each sample says where its prediction belongs.

    Extra sample keys: ``source_path`` (the file), ``frame`` (0-based frame of a multi-frame
    file, -1 for a single-frame file) and ``native_size`` (the file's rows and columns).
    """

    def read(self, index: int) -> dict[str, Any]:
        dicom = read_dicom(self.paths[index], frame=self.frames[index], **self.read_args)
        if self.read_args.get("target_spacing") is None:
            size = dicom.image.shape[:2]
        else:  # resampled for the network: outputs go back onto the file's own grid
            meta = dicom_meta(self.paths[index])
            size = (meta["Rows"], meta["Columns"])
        return {"image": dicom.image, "label": self.labels[index], "id": self.ids[index],
                "source_path": self.paths[index],
                "frame": dicom.frame if dicom.num_frames > 1 else -1,
                "native_size": np.asarray(size, dtype=np.int64)}


class DicomSegmentationDataModule(DicomDataModule):
    """DICOM images with masks (PNG/NPY, or DICOM SEG) from a manifest, patient-level splits.

    Args:
        mask_column: manifest column with the mask path (PNG/TIFF, .npy, or a DICOM SEG file).
        mask_values: mask values of the foreground classes in class order (background is
            0); default: any non-zero value is one foreground class. For DICOM SEG the values
            are segment numbers.
        foreground_names: names of the foreground classes (``background`` is added first).
        segment_overlap: DICOM SEG pixels in segments of two different classes: ``error``
            (default) or ``first_listed`` (the class listed first in ``mask_values`` wins).
        predict_format: what ``predict`` writes per image, at the image's own size (see
            :class:`~domains.medical.prediction.SegmentationMaskWriter`): ``png`` (class index
            per pixel), ``dicom_seg`` (a DICOM SEG referencing the image) or ``both``.
        **kwargs: options of :class:`DicomDataModule` (``manifest``, ``path_column``,
            ``patient_column``, ``window``, ``on_bad_file`` ...).
    """

    # Masks at the image's own size (for HD95 at native resolution) differ between samples.
    ragged_keys = ("native_mask",)

    def __init__(self, mask_column: str = "mask", mask_values: list[int] | None = None,
                 foreground_names: list[str] | None = None,
                 segment_overlap: SegmentOverlap = "error", predict_format: PredictFormat = "png",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.hparams.root is not None:
            raise DataError("segmentation needs a manifest with a mask column, not class folders")
        foreground = self.segment_names()[1:]
        if mask_values is not None and len(foreground) != len(mask_values):
            raise DataError(f"{len(foreground)} foreground_names for {len(mask_values)} mask_values")
        if predict_format not in PREDICT_FORMATS:
            raise DataError(f"predict_format '{predict_format}' is not one of {list(PREDICT_FORMATS)}")
        self.predict_format = predict_format

    @property
    def multilabel(self) -> bool:
        return False

    def segment_names(self) -> list[str]:
        """``background`` and the foreground class names, in class-index order."""
        h = self.hparams
        return ["background", *(h.foreground_names or [f"class_{v}" for v in (h.mask_values or [1])])]

    def target_columns(self) -> list[str]:
        return [self.hparams.mask_column]

    def raw_target(self, row: dict[str, str], base: Path) -> Path:
        mask = Path(row[self.hparams.mask_column].strip()).expanduser()
        mask = mask if mask.is_absolute() else base / mask
        if not mask.is_file():
            raise DataError(f"mask '{row[self.hparams.mask_column]}' does not exist (looked at {mask}); "
                            "fix the mask column or set on_bad_file: skip")
        return mask

    def make_source(self, paths: list[Path], frames: list[int | str], targets: list[Any],
                    ids: list[str], patients: list[str]) -> DicomMaskSource:
        """Images with their masks; the classes come from the settings, not the masks."""
        return DicomMaskSource(paths, frames, targets, ids, self._read_args(), self.hparams.mask_values,
                               self.hparams.segment_overlap, class_names=self.segment_names(),
                               groups=patients)

    def train_class_counts(self) -> list[int]:
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for i in self.train_indices:
            mask = self.source.read_mask(int(i))
            counts += np.bincount(mask[mask < self.num_classes].ravel(), minlength=self.num_classes)
        return counts.tolist()

    @property
    def positive_classes(self) -> None:
        return None
