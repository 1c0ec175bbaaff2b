"""Golden images: a few val images with the workstation's FP32 detections, shipped in the bundle.

A robot runs its own engine (TensorRT INT8/FP16, or the CPU) on them after install and compares
(`compare_golden`): a wrong engine, a bad calibration or a broken preprocessing shows up as missing,
moved or re-scored boxes. Files inside a bundle:

- calibration/golden/<i>.png: the images (PNG, so the robot decodes exactly the same pixels);
- calibration/golden.json: [{"image": "calibration/golden/0.png", "boxes": [[x1, y1, x2, y2], ...],
  "scores": [...], "class_ids": [...]}, ...], boxes in image pixels, detections at the manifest's
  score_threshold.

Robot code: no paddleslim, Python 3.8; OpenCV and Paddle only inside the functions that need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edge_sdk.data.dataset import ImageRecord
from edge_sdk.detections import Detections
from edge_sdk.errors import BundleError, DataError

GOLDEN_JSON = "calibration/golden.json"
GOLDEN_DIR = "calibration/golden"


@dataclass(frozen=True)
class GoldenEntry:
    """One golden image: its archive name and the expected detections (boxes (N,4) xyxy pixels)."""

    image: str
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def to_dict(self) -> Dict[str, Any]:
        return {
            "image": self.image,
            "boxes": [[round(float(v), 3) for v in box] for box in self.boxes],
            "scores": [round(float(s), 5) for s in self.scores],
            "class_ids": [int(c) for c in self.class_ids],
        }

    @classmethod
    def from_dict(cls, entry: Any, where: str = GOLDEN_JSON) -> GoldenEntry:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise BundleError('{}: each entry needs an "image" name, got {!r}'.format(where, entry))
        try:
            boxes = np.asarray(entry.get("boxes", []), np.float32).reshape(-1, 4)
            scores = np.asarray(entry.get("scores", []), np.float32).reshape(-1)
            class_ids = np.asarray(entry.get("class_ids", []), np.int32).reshape(-1)
        except (TypeError, ValueError):
            raise BundleError(
                "{}: entry {} has malformed boxes, scores or class_ids".format(where, entry["image"])
            ) from None
        if not len(boxes) == len(scores) == len(class_ids):
            raise BundleError(
                "{}: entry {} has {} boxes, {} scores and {} class ids".format(
                    where, entry["image"], len(boxes), len(scores), len(class_ids)
                )
            )
        return cls(entry["image"], boxes, scores, class_ids)


def pick_golden_records(records: Sequence[ImageRecord], count: int) -> List[ImageRecord]:
    """`count` records spread evenly over `records` (deterministic; all of them when fewer)."""
    if count <= 0 or not records:
        return []
    if count >= len(records):
        return list(records)
    picks = np.linspace(0, len(records) - 1, count).round().astype(int)
    return [records[i] for i in picks]


def write_golden(detector: Any, records: Sequence[ImageRecord], out_dir: Union[str, Path]) -> Dict[str, Path]:
    """Run `detector` (a device.pipeline.Detector on the FP32 bundle) on `records` at its manifest's
    score threshold; write out_dir/calibration/golden/<i>.png and out_dir/calibration/golden.json.

    Returns the bundle extra_files mapping (archive name -> written file).
    """
    import cv2

    out_dir = Path(out_dir)
    image_dir = out_dir / GOLDEN_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Path] = {}
    entries = []
    for index, record in enumerate(records):
        image = cv2.imread(str(record.path), cv2.IMREAD_COLOR)
        if image is None:
            raise DataError("cannot decode image {}".format(record.path))
        arcname = "{}/{}.png".format(GOLDEN_DIR, index)
        target = out_dir / arcname
        if not cv2.imwrite(str(target), image):
            raise DataError("cannot write golden image {}".format(target))
        files[arcname] = target
        found = detector.detect(image)
        entries.append(GoldenEntry(arcname, found.boxes, found.scores, found.class_ids).to_dict())
    golden_json = out_dir / GOLDEN_JSON
    tmp = golden_json.with_name(".golden.json.tmp")
    tmp.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    tmp.replace(golden_json)
    files[GOLDEN_JSON] = golden_json
    return files


def load_golden(root: Union[str, Path]) -> List[GoldenEntry]:
    """The entries of root/calibration/golden.json (root: a bundle's extracted folder)."""
    path = Path(root) / GOLDEN_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError("bundle has no {}".format(GOLDEN_JSON)) from None
    except ValueError as exc:
        raise BundleError("{} is not valid JSON: {}".format(GOLDEN_JSON, exc)) from None
    if not isinstance(document, list):
        raise BundleError("{}: expected a list of entries".format(GOLDEN_JSON))
    return [GoldenEntry.from_dict(entry) for entry in document]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes a (N,4) and b (M,4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def compare_golden(
    detections: Detections,
    expected: Union[GoldenEntry, Mapping[str, Any]],
    iou: float = 0.9,
    score_tol: float = 0.05,
    score_threshold: Optional[float] = None,
) -> Tuple[bool, str]:
    """Do `detections` reproduce a golden entry? Returns (ok, one-line report).

    Each expected box, highest score first, must match a distinct detection of the same class with
    IoU >= iou and |score difference| <= score_tol. score_threshold (the threshold the detections
    were made at): an expected box or an extra detection scoring below score_threshold + score_tol
    may be missing or extra without failing (engines disagree at the edge of the threshold).
    """
    entry = expected if isinstance(expected, GoldenEntry) else GoldenEntry.from_dict(dict(expected))
    boxes = np.asarray(detections.boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(detections.scores, np.float32).reshape(-1)
    class_ids = np.asarray(detections.class_ids, np.int32).reshape(-1)
    borderline = None if score_threshold is None else float(score_threshold) + score_tol
    overlaps = box_iou(entry.boxes, boxes)
    used = np.zeros(len(boxes), bool)
    problems: List[str] = []
    matched = 0
    for i in np.argsort(-entry.scores, kind="stable"):
        fits = (
            (~used)
            & (class_ids == entry.class_ids[i])
            & (overlaps[i] >= iou)
            & (np.abs(scores - entry.scores[i]) <= score_tol)
        )
        if fits.any():
            j = int(np.argmax(np.where(fits, overlaps[i], -1.0)))
            used[j] = True
            matched += 1
            continue
        if borderline is not None and entry.scores[i] < borderline:
            continue
        problems.append(_describe_miss(entry, int(i), boxes, scores, class_ids, used, overlaps[i]))
    extra = [j for j in range(len(boxes)) if not used[j] and (borderline is None or scores[j] >= borderline)]
    for j in extra:
        problems.append(
            "extra class {} score {:.3f} at {}".format(int(class_ids[j]), float(scores[j]), _box_text(boxes[j]))
        )
    summary = "{}: {}/{} expected boxes matched".format(entry.image, matched, len(entry.boxes))
    if problems:
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        return False, "{}, {} problem(s): {}".format(summary, len(problems), shown)
    return True, summary


def _box_text(box: np.ndarray) -> str:
    return "[{}]".format(", ".join("{:.1f}".format(float(v)) for v in box))


def _describe_miss(
    entry: GoldenEntry,
    i: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    used: np.ndarray,
    overlaps: np.ndarray,
) -> str:
    what = "class {} score {:.3f} at {}".format(
        int(entry.class_ids[i]), float(entry.scores[i]), _box_text(entry.boxes[i])
    )
    same_class = (~used) & (class_ids == entry.class_ids[i])
    if not same_class.any():
        return "missing " + what
    j = int(np.argmax(np.where(same_class, overlaps, -1.0)))
    return "missing {} (nearest: IoU {:.2f}, score {:.3f})".format(what, float(overlaps[j]), float(scores[j]))


def check_golden(
    detector: Any, root: Union[str, Path], iou: float = 0.9, score_tol: float = 0.05
) -> Tuple[bool, List[str]]:
    """Run `detector` on every golden image under root (a bundle's extracted folder) and compare.

    Returns (all ok, one report line per image).
    """
    import cv2

    root = Path(root)
    threshold = detector.manifest.postprocess.score_threshold
    ok_all, reports = True, []
    for entry in load_golden(root):
        image = cv2.imread(str(root / entry.image), cv2.IMREAD_COLOR)
        if image is None:
            raise BundleError("cannot decode golden image {}".format(entry.image))
        ok, report = compare_golden(detector.detect(image), entry, iou, score_tol, threshold)
        ok_all = ok_all and ok
        reports.append(report)
    return ok_all, reports


def make_golden(
    fp32_bundle: Any, records: Sequence[ImageRecord], out_dir: Union[str, Path], count: int = 4
) -> Dict[str, Path]:
    """`write_golden` with the FP32 bundle (an opened Bundle or a path) on the CPU, for `count` of `records`."""
    from device.pipeline import Detector

    with Detector(fp32_bundle, device="cpu") as detector:
        return write_golden(detector, pick_golden_records(records, count), out_dir)
