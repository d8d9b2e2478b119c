"""Agriculture / remote sensing: multispectral GeoTIFF scenes and patches."""

from domains.agriculture.datamodules import GeoTiffFolderDataModule, SceneSegmentationDataModule

__all__ = ["GeoTiffFolderDataModule", "SceneSegmentationDataModule"]
