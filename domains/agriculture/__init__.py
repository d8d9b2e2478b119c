"""Agriculture / remote sensing: multispectral GeoTIFF scenes and patches."""

from core.lazy import lazy_exports

__all__ = ["GeoTiffFolderDataModule", "SceneDetectionDataModule", "SceneDetectionTask",
           "SceneSegmentationDataModule", "SceneSegmentationTask"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "GeoTiffFolderDataModule": "datamodules", "SceneSegmentationDataModule": "datamodules",
    "SceneSegmentationTask": "tasks",
    "SceneDetectionDataModule": "detection", "SceneDetectionTask": "detection",
})
