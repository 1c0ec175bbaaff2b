"""Datasets: COCO and Pascal VOC readers, the procedural PCB-defect generator, and statistics.

OpenCV and matplotlib are imported inside the functions that need them.
"""

from edge_sdk.data.coco import load_coco
from edge_sdk.data.dataset import Dataset, ImageRecord
from edge_sdk.data.load import load_dataset
from edge_sdk.data.stats import box_sizes, plot_box_sizes, stats
from edge_sdk.data.synth import CLASSES, image_rng, render_board, synthesize
from edge_sdk.data.voc import load_voc

__all__ = [
    "CLASSES",
    "Dataset",
    "ImageRecord",
    "box_sizes",
    "image_rng",
    "load_coco",
    "load_dataset",
    "load_voc",
    "plot_box_sizes",
    "render_board",
    "stats",
    "synthesize",
]
