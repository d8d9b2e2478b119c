"""Manufacturing defect inspection: ELPV solar cells, image folders, defect operating points."""

from domains.manufacturing.elpv import ELPVDataModule
from domains.manufacturing.folder import DefectFolderDataModule
from domains.manufacturing.task import DefectClassificationTask

__all__ = ["DefectClassificationTask", "DefectFolderDataModule", "ELPVDataModule"]
