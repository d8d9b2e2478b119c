"""Medical imaging: DICOM reading, patient-level splits, clinical metrics, segmentation."""

from domains.medical.datamodules import DicomDataModule, DicomSegmentationDataModule
from domains.medical.tasks import MedicalClassificationTask, MedicalSegmentationTask

__all__ = ["DicomDataModule", "DicomSegmentationDataModule", "MedicalClassificationTask",
           "MedicalSegmentationTask"]
