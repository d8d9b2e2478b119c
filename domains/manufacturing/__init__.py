"""Manufacturing defect inspection: ELPV solar cells, image folders, defect operating points."""

from core.lazy import lazy_exports

__all__ = ["DefectClassificationTask", "DefectDetectionDataModule", "DefectDetectionTask",
           "DefectFolderDataModule", "ELPVDataModule"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "DefectClassificationTask": "task", "DefectDetectionDataModule": "detection",
    "DefectDetectionTask": "detection_task",
    "DefectFolderDataModule": "folder", "ELPVDataModule": "elpv",
})
