"""Medical imaging: DICOM reading, patient-level splits, clinical metrics, segmentation."""

from core.lazy import lazy_exports

__all__ = ["DicomDataModule", "DicomDetectionDataModule", "DicomSegmentationDataModule",
           "MedicalClassificationTask", "MedicalDetectionTask", "MedicalSegmentationTask"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "DicomDataModule": "datamodules", "DicomSegmentationDataModule": "datamodules",
    "MedicalClassificationTask": "tasks", "MedicalSegmentationTask": "tasks",
    "DicomDetectionDataModule": "detection", "MedicalDetectionTask": "detection_task",
})
