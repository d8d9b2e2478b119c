"""Manufacturing defect inspection: ELPV solar cells, image folders, defect operating points."""

from core.lazy import lazy_exports

__all__ = ["DefectClassificationTask", "DefectDetectionDataModule", "DefectFolderDataModule",
           "ELPVDataModule"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "DefectClassificationTask": "task", "DefectDetectionDataModule": "detection",
    "DefectFolderDataModule": "folder", "ELPVDataModule": "elpv",
})
