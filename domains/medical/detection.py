"""Medical detection data: a CSV box manifest over DICOM images, patient-level splits.

The manifest has one row per box, columns ``path,x0,y0,x1,y1,label,patient_id`` and an optional
``frame``:

* ``x0,y0,x1,y1`` are pixel-edge coordinates of the image as stored in the file (its Columns x
  Rows, before ``target_spacing`` or the resize to the network input): ``x0 = 0`` is the left
  edge of the first column, ``x1 = Columns`` the right edge of the last. Boxes are scaled with
  the image wherever it is resized.
* An image with several boxes has several rows. An image without objects (a negative slice) is
  one row whose ``x0,y0,x1,y1`` and ``label`` are all empty; it is kept, with zero boxes, and
  lands in every split. A row with only some of the five empty is a bad row.
* ``path`` is relative to the manifest's folder (or absolute). ``frame`` is the 0-based frame of
  a multi-frame file the box was drawn on; an empty or missing ``frame`` means frame 0 of a
  single-frame file, and is a bad row for a multi-frame file (taking some frame would pair the
  box with the wrong slice).
* Row numbers in messages count the header as row 1, as a spreadsheet shows them.

Bad rows (missing or non-DICOM file, non-numeric coordinate, inverted box, box outside the
image by more than ``box_tolerance``, a label outside ``class_order``, a frame out of range,
two patients for one image, a negative row beside box rows) follow ``on_bad_annotation``
(:mod:`core.annotations`): ``error`` stops naming the manifest, the row and the fix; ``skip``
leaves the whole image out and lists it in ``skipped_files.csv``. An empty manifest or a
missing column is always an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.annotations import (
    AnnotationSet,
    BadAnnotation,
    BadAnnotationPolicy,
    ImageAnnotations,
    check_box,
    unknown_class,
)
from core.data import DataError, read_manifest
from core.detection_data import DetectionDataModule, DetectionSource
from core.filescan import ImageInfo
from domains.medical.contract import DicomContract
from domains.medical.datamodules import Window, _pseudonym, patient_from_header
from domains.medical.dicom import dicom_meta, read_dicom
from domains.medical.plugin import DICOM, DICOM_EXTENSIONS

log = logging.getLogger(__name__)

BOX_COLUMNS = ("x0", "y0", "x1", "y1")
LABEL_COLUMN = "label"
_SHOW = 10


@dataclass(frozen=True)
class _Row:
    """One manifest row, parsed; ``problem`` says why it is bad."""

    line: int
    path: Path
    given: str  # the path as written, for messages
    frame: int | None
    box: tuple[float, float, float, float] | None  # None: a negative row
    label: str | None
    patient: str | None  # pseudonym; None when read from the header
    problem: str | None = None


class DicomDetectionSource(DetectionSource):
    """DICOM images (one frame each) with their boxes, read through the DICOM reader.

    Samples also carry ``path`` (the file), ``sop_instance_uid``, ``frame`` (0-based) and
    ``patient_index`` (the patient's position in this source, -1 when unknown: an integer for
    per-patient metrics, never an identifier).

    Args:
        images: the checked images and their boxes, at the stored size.
        class_names: object classes in index order.
        frames: the 0-based frame of each image.
        uids: each image's SOP Instance UID ("" when it has none).
        ids: one unique id per image (path or SOP Instance UID, ``#frame<n>`` for multi-frame).
        patients: each image's patient pseudonym (the split groups); None for prediction inputs.
        read_args: ``window`` and ``target_spacing`` of :func:`~domains.medical.dicom.read_dicom`.
    """

    def __init__(self, images: Sequence[ImageAnnotations], class_names: Sequence[str], frames: Sequence[int],
                 uids: Sequence[str], ids: Sequence[str], patients: Sequence[str] | None,
                 read_args: dict[str, Any]) -> None:
        # The DICOM window, not an image mode, sets the channels: core's channel conversion is unused.
        super().__init__(images, class_names, channels="gray")
        self.frames, self.uids, self.read_args = [int(f) for f in frames], list(uids), dict(read_args)
        self.ids = list(ids)
        if patients is not None:
            self.groups = list(patients)
            order = {p: i for i, p in enumerate(dict.fromkeys(patients))}
            self.patient_index = [order[p] for p in patients]
        else:
            self.patient_index = [-1] * len(self.images)

    def read_image(self, index: int) -> np.ndarray:
        return read_dicom(self.paths[index], frame=self.frames[index], **self.read_args).image

    def read(self, index: int) -> dict[str, Any]:
        sample = super().read(index)
        item = self.images[index]
        height, width = sample["image"].shape[:2]
        if (height, width) != (item.height, item.width):  # resampled to target_spacing
            sample["boxes"] = sample["boxes"] * np.array([width / item.width, height / item.height] * 2,
                                                         np.float32)
        sample.update(path=self.paths[index], sop_instance_uid=self.uids[index], frame=self.frames[index],
                      patient_index=self.patient_index[index])
        return sample


class DicomDetectionDataModule(DetectionDataModule):
    """Boxes on DICOM images from a CSV manifest (``path,x0,y0,x1,y1,label,patient_id[,frame]``;
    the rules are in :mod:`domains.medical.detection`), split by patient: a patient's images are
    all in one split. Images are read like the DICOM classification data (modality LUT,
    ``window``, MONOCHROME1 inverted, ``target_spacing``); batches follow
    :mod:`core.detection_data`.

    Args:
        manifest: the CSV file; relative paths are resolved against its folder.
        path_column: manifest column with the DICOM file.
        patient_column: manifest column with the patient key; ``null`` reads PatientID from each
            file's header. Either way the key is only hashed and compared, never written.
        frame_column: optional manifest column with the 0-based frame of multi-frame files.
        window: ``file``, a preset (lung, mediastinum, bone, brain, abdomen, ...),
            ``[center, width]``, a list of those (one channel each), or ``null`` (modality values).
        target_spacing: resample to this pixel spacing in mm (``null`` keeps the stored grid);
            boxes stay in stored pixels in the manifest and are scaled with the image.
        id_field: sample id (in reports): ``path`` or ``sop_instance_uid``; ``#frame<n>`` is
            added for frames of multi-frame files. Predictions carry both.
        **kwargs: options of :class:`~core.detection_data.DetectionDataModule`: ``class_order``
            (the classes in index order; a label outside it is a bad row, the closest name
            suggested; default: the sorted labels of the manifest), ``on_bad_annotation``,
            ``box_tolerance``, ``min_box_size``, ``min_visibility``, and those of
            :class:`~core.data.ConvNeXtDataModule`.
    """

    file_extensions = DICOM_EXTENSIONS
    # Options of the file-annotation formats that a box manifest has no use for.
    _not_for_manifests: dict[str, Any] = {
        "annotations": None, "format": "auto", "images": None, "channels": None, "instance_masks": False,
        "keep_difficult": True, "crowd": "drop", "mask_values": None, "mask_threshold": None, "min_mask_area": 4}

    def __init__(
        self,
        manifest: str | None = None,
        path_column: str = "path",
        patient_column: str | None = "patient_id",
        frame_column: str = "frame",
        window: Window = None,
        target_spacing: float | None = None,
        id_field: Literal["path", "sop_instance_uid"] = "path",
        **kwargs: Any,
    ) -> None:
        given = [k for k, default in self._not_for_manifests.items() if kwargs.get(k, default) != default]
        if given:
            raise DataError(f"{type(self).__name__} reads boxes from a CSV manifest (data.init_args.manifest); "
                            f"remove {given}: they are options of annotation files and masks (the window sets the "
                            "channels)")
        super().__init__(**kwargs)
        if manifest is None:
            columns = [path_column, *BOX_COLUMNS, LABEL_COLUMN, *([patient_column] if patient_column else [])]
            raise DataError(f"{type(self).__name__} needs data.init_args.manifest: a CSV with columns "
                            f"{','.join(columns)}[,{frame_column}], one row per box")
        if id_field not in ("path", "sop_instance_uid"):
            raise DataError(f"id_field is '{id_field}'; use path or sop_instance_uid")

    # -- reading the manifest --
    def _read_args(self) -> dict[str, Any]:
        return {"window": self.hparams.window, "target_spacing": self.hparams.target_spacing}

    def _parse(self, rows: list[dict[str, str]], base: Path, where: str) -> list[_Row]:
        h = self.hparams
        parsed = []
        for line, row in enumerate(rows, start=2):
            given = (row.get(h.path_column) or "").strip()
            path = Path(given).expanduser()
            path = path if path.is_absolute() else base / path
            frame_text = (row.get(h.frame_column) or "").strip()
            values = [(row.get(c) or "").strip() for c in (*BOX_COLUMNS, LABEL_COLUMN)]
            patient = (row.get(h.patient_column) or "").strip() if h.patient_column else None
            problem, box, frame = None, None, None
            try:
                if not given:
                    raise BadAnnotation(f"the {h.path_column} column is empty; give the DICOM file")
                if h.patient_column and not patient:
                    raise BadAnnotation(f"the {h.patient_column} column is empty; give the patient key "
                                        "(patient-level splits need it)")
                if frame_text:
                    frame = _frame_value(frame_text, h.frame_column)
                empty = [c for c, v in zip((*BOX_COLUMNS, LABEL_COLUMN), values, strict=True) if not v]
                if 0 < len(empty) < 5:
                    raise BadAnnotation(f"{', '.join(empty)} empty but not the others: give all of x0, y0, "
                                        "x1, y1 and label for a box, or leave all five empty for an image "
                                        "without objects")
                if not empty:
                    box = tuple(_number(v, c) for v, c in zip(values[:4], BOX_COLUMNS, strict=True))
            except BadAnnotation as bad:
                problem = f"{where} row {line}: {bad}"
            parsed.append(_Row(line, path, given, frame, box, values[4] or None,  # type: ignore[arg-type]
                               _pseudonym(patient) if patient else None, problem))
        return parsed

    def read_manifest_images(self, policy: BadAnnotationPolicy) -> tuple[AnnotationSet, list[int], list[str],
                                                                        list[str], list[str]]:
        """The manifest's checked images and class names (see the module docstring), with each
        image's frame, SOP Instance UID, id and patient pseudonym."""
        h = self.hparams
        manifest = Path(h.manifest).expanduser()
        required = [h.path_column, *BOX_COLUMNS, LABEL_COLUMN] + ([h.patient_column] if h.patient_column else [])
        rows = read_manifest(manifest, required)
        where = f"manifest '{manifest}'"
        parsed = self._parse(rows, manifest.parent, where)
        known = [str(c) for c in h.class_order] if h.class_order else None
        if known is not None and len(set(known)) != len(known):
            raise DataError(f"class_order {known} names a class twice; list each class once")

        metas: dict[Path, dict[str, Any] | str] = {}
        groups: dict[tuple[str, int], list[_Row]] = {}
        for row in parsed:
            if row.path not in metas:
                metas[row.path] = self._meta(row)
            meta = metas[row.path]
            problem = row.problem
            if problem is None and isinstance(meta, str):
                problem = f"{where} row {row.line}: {meta}"
            frame = row.frame if row.frame is not None else 0
            if problem is None:
                try:
                    frame = _frame_of(row, meta["NumberOfFrames"], h.frame_column)  # type: ignore[index]
                except BadAnnotation as bad:
                    problem = f"{where} row {row.line}: {bad}"
                    frame = -row.line  # no frame to pair the box with: a bad entry of its own
            # A bad row spoils its whole image: kept without it, its object would train as background.
            # Keyed by the resolved file: "a.dcm" and "./x/../a.dcm" are one image.
            groups.setdefault((str(row.path.resolve()), frame), []).append(
                row if problem is None else _with(row, problem))

        images, frames, uids, ids, patients = [], [], [], [], []
        for (_, frame), image_rows in groups.items():
            path, meta = str(image_rows[0].path), metas[image_rows[0].path]
            try:
                item, patient = self._check_image(image_rows, meta, known, where)
            except BadAnnotation as bad:
                policy(path, str(bad))
                continue
            assert isinstance(meta, dict)  # a file without metadata made its rows bad above
            if h.on_bad_annotation == "skip" and not self._decodes(path, frame, policy):
                continue
            images.append(item)
            frames.append(frame)
            uids.append(meta["SOPInstanceUID"] or "")
            key = (meta["SOPInstanceUID"] or path) if h.id_field == "sop_instance_uid" else path
            ids.append(key + (f"#frame{frame}" if meta["NumberOfFrames"] > 1 else ""))
            patients.append(patient)
        if policy.count:
            shown = "\n".join(f"  {p}: {r}" for p, r in policy.skipped[-policy.count:][:_SHOW])
            more = f"\n  ... and {policy.count - _SHOW} more" if policy.count > _SHOW else ""
            log.warning("skipped %d image(s) with bad manifest rows (listed in skipped_files.csv):\n%s%s",
                        policy.count, shown, more)
        if not images:
            raise DataError(f"no usable image left in {where}; see the skipped rows above")
        names = known if known is not None else sorted({lab for item in images for lab in item.labels})
        if not names:
            raise DataError(f"no row of {where} has a box and no class_order is given; a detector needs "
                            "at least one annotated object")
        if len(set(ids)) != len(ids):
            raise DataError(f"two images of {where} have the same id (id_field: {h.id_field}); use "
                            "id_field: path")
        return AnnotationSet(images, list(names)), frames, uids, ids, patients

    def _meta(self, row: _Row) -> dict[str, Any] | str:
        """The file's header facts, or why it cannot be used."""
        if not row.path.is_file():
            return (f"'{row.given}' does not exist (looked at {row.path}); fix the path or delete the row"
                    if not row.path.exists() else f"'{row.given}' is a folder; name one DICOM file per row")
        try:
            return dicom_meta(row.path)
        except DataError as err:
            return str(err)

    def _check_image(self, rows: list[_Row], meta: Any, known: list[str] | None,
                     where: str) -> tuple[ImageAnnotations, str]:
        """One image's rows checked together; :class:`BadAnnotation` names the first bad row."""
        first_bad = next((r for r in rows if r.problem), None)
        if first_bad is not None:
            raise BadAnnotation(first_bad.problem)
        width, height = int(meta["Columns"]), int(meta["Rows"])
        negatives = [r for r in rows if r.box is None]
        if negatives and len(negatives) < len(rows):
            boxed = next(r for r in rows if r.box is not None)
            raise BadAnnotation(f"{where} row {negatives[0].line} marks '{rows[0].given}' as having no "
                                f"objects, but row {boxed.line} gives it a box; delete one of them")
        patients = {r.patient for r in rows}
        if len(patients) > 1:
            raise BadAnnotation(f"{where} rows {rows[0].line} and "
                                f"{next(r.line for r in rows if r.patient != rows[0].patient)} give "
                                f"'{rows[0].given}' two different patients; fix the patient column")
        patient = rows[0].patient or self._header_patient(rows[0], where)
        boxes, labels, names = [], [], []
        for row in rows:
            if row.box is None:
                continue
            try:
                boxes.append(check_box(row.box, width, height, self.hparams.box_tolerance))
            except BadAnnotation as bad:
                raise BadAnnotation(f"{where} row {row.line}: {bad}") from None
            if known is not None and row.label not in known:
                raise BadAnnotation(f"{where} row {row.line}: {unknown_class(str(row.label), known)}")
            labels.append(str(row.label))
            names.append(f"row {row.line}")
        info = ImageInfo(str(rows[0].path), str(meta.get("PhotometricInterpretation") or ""), width, height, False)
        item = ImageAnnotations(info, np.asarray(boxes, np.float32).reshape(-1, 4), tuple(labels), tuple(names),
                                where)
        return item, patient

    def _header_patient(self, row: _Row, where: str) -> str:
        try:
            return patient_from_header(row.path)
        except DataError as err:
            raise BadAnnotation(f"{where} row {row.line}: {err}") from None

    def _decodes(self, path: str, frame: int, policy: BadAnnotationPolicy) -> bool:
        """Skip mode: decode once at setup (truncated pixel data shows only when read)."""
        try:
            read_dicom(path, frame=frame, **self._read_args())
        except DataError as err:
            policy(path, str(err))
            return False
        return True

    # -- the source --
    def build_source(self) -> DicomDetectionSource:
        found, frames, uids, ids, patients = self.read_manifest_images(
            BadAnnotationPolicy(self.hparams.on_bad_annotation, self.skipped))
        source = DicomDetectionSource(found.images, found.class_names, frames, uids, ids, patients,
                                      self._read_args())
        self._describe(source)
        log.info("%d patients", len(set(patients)))
        return source

    def predict_source(self, paths: list[Path]) -> DicomDetectionSource:
        """DICOM files to predict on: every frame of a multi-frame file is one image; unreadable
        files follow ``on_bad_annotation``."""
        policy = BadAnnotationPolicy(self.hparams.on_bad_annotation, self.skipped)
        images, frames, uids, ids = [], [], [], []
        for path in paths:
            try:
                meta = dicom_meta(path)
                read_dicom(path, frame=0, **self._read_args())  # fails here, not in the loader
            except DataError as err:
                policy(str(path), str(err))
                continue
            info = ImageInfo(str(path), str(meta.get("PhotometricInterpretation") or ""), int(meta["Columns"]),
                             int(meta["Rows"]), False)
            uid = meta["SOPInstanceUID"] or ""
            key = (uid or str(path)) if self.hparams.id_field == "sop_instance_uid" else str(path)
            for frame in range(meta["NumberOfFrames"]):
                images.append(ImageAnnotations.negative(info))
                frames.append(frame)
                uids.append(uid)
                ids.append(key + (f"#frame{frame}" if meta["NumberOfFrames"] > 1 else ""))
        if not images:
            raise DataError("none of the predict_paths is a readable DICOM file; see the reasons above")
        return DicomDetectionSource(images, self.class_names, frames, uids, ids, None, self._read_args())

    def input_contract(self) -> DicomContract:
        """The DICOM reader's contract: training's window(s) and pixel spacing; ``frames: all``
        because the manifest's boxes may lie on any frame."""
        h = self.hparams
        return DICOM.contract(**self.contract_fields(), window=h.window, frames="all",
                              target_spacing=h.target_spacing)


# ---- row values ------------------------------------------------------------------------------
def _number(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadAnnotation(f"{column} '{text}' is not a number; give pixel coordinates of the stored "
                            "image") from None
    return value


def _frame_value(text: str, column: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise BadAnnotation(f"{column} '{text}' is not a 0-based frame index (0, 1, 2 ...)")
    return int(value)


def _frame_of(row: _Row, count: int, column: str) -> int:
    if row.frame is None:
        if count > 1:
            raise BadAnnotation(f"'{row.given}' has {count} frames and the row gives none; add a "
                                f"'{column}' column with the 0-based frame the box was drawn on")
        return 0
    if row.frame >= count:
        raise BadAnnotation(f"{column} {row.frame} is out of range: '{row.given}' has {count} frame(s) "
                            f"(0..{count - 1})")
    return row.frame


def _with(row: _Row, problem: str) -> _Row:
    return _Row(row.line, row.path, row.given, row.frame, row.box, row.label, row.patient, problem)
