"""COCO results JSON of a run: one {image_id, category_id, bbox [x, y, w, h], score} per detection,
written when the run ends, so `edge-sdk eval --gt GT --dt FILE` can score it.

With a COCO ground-truth file (`gt`), image_id is the id it gives the frame's image file name (a
folder run over the dataset's image folder) and category_id the id of the category named like the
class; frames whose image the ground truth does not list are left out. Without it, image_id is the
frame_id (the frame's position in the file or folder) and category_id the class index (0-based, in
the bundle's class order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from edge_sdk.errors import SinkError
from edge_sdk.fileio import atomic_write_text


def _gt_ids(gt: Path, classes: Sequence[str]) -> Tuple[Dict[str, int], Dict[int, int]]:
    """(image file name -> image id, class index -> category id) from a COCO ground-truth file."""
    try:
        document = json.loads(gt.read_text(encoding="utf-8"))
        images = {Path(str(image["file_name"])).name: int(image["id"]) for image in document["images"]}
        categories = {str(category["name"]): int(category["id"]) for category in document["categories"]}
    except OSError as error:
        raise SinkError("--coco-gt {}: {}".format(gt, error.strerror or error)) from None
    except (ValueError, KeyError, TypeError) as error:
        raise SinkError("--coco-gt {}: not COCO ground truth ({})".format(gt, error)) from None
    missing = [name for name in classes if name not in categories]
    if missing:
        raise SinkError("--coco-gt {} has no category named {}".format(gt, ", ".join(missing)))
    return images, {index: categories[name] for index, name in enumerate(classes)}


def check_coco_results(path: str, classes: Sequence[str] = (), gt: Optional[str] = None) -> None:
    """Raise the SinkError `CocoResultsSink(path, classes, gt)` would, without collecting anything
    (so `run` refuses a wrong --coco-results/--coco-gt before it builds the predictor)."""
    CocoResultsSink(path, classes, gt)


class CocoResultsSink:
    """Collects every frame's detections and writes them to `path` as a COCO results list on close.

    classes: the bundle's class names. gt: a COCO ground-truth file naming image and category ids.
    """

    def __init__(self, path: str, classes: Sequence[str] = (), gt: Optional[str] = None) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise SinkError("--coco-results {}: folder {} does not exist".format(path, self.path.parent))
        self.gt = Path(gt) if gt else None
        self._image_ids: Optional[Dict[str, int]] = None
        self._category_ids: Dict[int, int] = {index: index for index in range(len(classes))}
        if self.gt is not None:
            self._image_ids, self._category_ids = _gt_ids(self.gt, classes)
        self.results: List[dict] = []
        self.images = 0
        self.left_out = 0
        self._closed = False

    def write(self, frame, detections, stats: dict) -> None:
        if self._image_ids is None:
            image_id = int(detections.frame_id)
        elif frame.source_name in self._image_ids:
            image_id = self._image_ids[frame.source_name]
        else:
            self.left_out += 1
            return
        self.images += 1
        for box, score, class_id in zip(
            detections.boxes.tolist(), detections.scores.tolist(), detections.class_ids.tolist()
        ):
            x1, y1, x2, y2 = box
            self.results.append(
                {
                    "image_id": image_id,
                    "category_id": self._category_ids.get(int(class_id), int(class_id)),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )

    def status(self, state: str, message: str) -> None:
        pass

    def close(self) -> None:
        """Write the results file (atomically: a stopped run leaves the whole list or nothing)."""
        if self._closed:
            return
        self._closed = True
        atomic_write_text(self.path, json.dumps(self.results))

    def report(self) -> str:
        """One line for the end of the run: what was written where."""
        text = "wrote {} detections on {} images to {}".format(len(self.results), self.images, self.path)
        if self.left_out:
            text += " ({} images not in {} left out)".format(self.left_out, self.gt)
        return text
