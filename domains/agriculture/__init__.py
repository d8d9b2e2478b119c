"""Agriculture / remote sensing: multispectral GeoTIFF scenes and patches."""

from domains.agriculture.datamodules import GeoTiffFolderDataModule, SceneSegmentationDataModule
from domains.agriculture.tasks import SceneSegmentationTask

__all__ = ["GeoTiffFolderDataModule", "SceneSegmentationDataModule", "SceneSegmentationTask"]
