"""Golden images: a few val images with the workstation's detections, shipped in a bundle.

After install a robot runs its own engine (TensorRT INT8/FP16, or the CPU) on them and compares
(`check_golden`): a wrong engine, a bad calibration or a broken preprocessing shows up as missing,
moved or re-scored boxes. Bundle members (`golden_files` builds them):

- calibration/golden/<i>.jpg: the images, JPEG (`encode_golden_image`, quality 75: about 9 KB for
  a 256x256 image against 123 KB as PNG; quality 75 to 95 agree equally well with the original
  image's detections, so the smallest is used). The workstation detects on the DECODED JPEG pixels
  (`decode_golden_image`), the pixels the robot decodes from the same file, so both run on the same
  input. Bundles written before carry calibration/golden/<i>.png; any image file OpenCV decodes is read.
- calibration/golden.json: one entry per image, boxes in source-image pixels::

    [{"image": "calibration/golden/0.jpg", "boxes": [[x1, y1, x2, y2], ...],
      "scores": [...], "class_ids": [...], "pixels_sha256": "<hex>"}]

  or {"score_threshold": 0.3, "images": [<the same entries>]} naming the threshold the
  workstation's detections were cut at (default: the manifest's postprocess.score_threshold).
  pixels_sha256 (optional, `pixels_digest` of the decoded image) lets the robot tell a JPEG decoder
  that decodes differently from a model that detects differently.

Robot code: Python 3.8, imports only edge_sdk; OpenCV inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from edge_sdk.errors import BundleError, DataError, EdgeSdkError
from edge_sdk.model_files import ModelFiles

GOLDEN_JSON = "calibration/golden.json"
GOLDEN_DIR = "calibration/golden"
GOLDEN_JPEG_QUALITY = 75
_IMAGE_SIGNATURES = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"))


class GoldenTolerance(NamedTuple):
    """How far a robot's detections may drift from the golden ones and still count as the same model.

    iou: minimum IoU of a match (same class); score_tolerance: maximum |score difference| of a match,
    also the width of the borderline band above the threshold; max_miss_fraction: allowed fraction
    of unmatched boxes over all golden images.
    """

    iou: float
    score_tolerance: float
    max_miss_fraction: float


# Per precision the model runs at. INT8 legitimately moves boxes and scores: on the demo (120 val
# images, CPU oneDNN int8 vs FP32) the nearest same-class box of an FP32 box has median IoU 0.93
# (5th percentile 0.84) and |score difference| median 0.05, 95th percentile 0.27. At IoU 0.5 /
# score +-0.25 / 34% a correct INT8 engine passed every sampled golden set while wrong
# preprocessing (channel order, mean/std, input size), clipped activation scales or weights with
# N(0, 8 LSB) noise failed 80-100% of them. See docs/deploy-to-robot.md.
PRECISION_TOLERANCES = {
    "fp32": GoldenTolerance(iou=0.9, score_tolerance=0.05, max_miss_fraction=0.1),
    "fp16": GoldenTolerance(iou=0.8, score_tolerance=0.1, max_miss_fraction=0.2),
    "int8": GoldenTolerance(iou=0.5, score_tolerance=0.25, max_miss_fraction=0.34),
}  # type: Dict[str, GoldenTolerance]
_LOOSENESS = ("fp32", "fp16", "int8")


def tolerance_for(*precisions: str) -> GoldenTolerance:
    """The tolerance of the loosest of `precisions` (fp32 < fp16 < int8; unknown names count as fp32):
    pass the bundle's precision and the one the engine runs at."""
    loosest = max((_LOOSENESS.index(p) if p in _LOOSENESS else 0 for p in precisions), default=0)
    return PRECISION_TOLERANCES[_LOOSENESS[loosest]]


@dataclass(frozen=True)
class GoldenEntry:
    """One golden image: its archive name and the expected detections.

    boxes: (N, 4) float xyxy source-image pixels; scores: (N,) float; class_ids: (N,) int32
    (from_dict keeps the JSON values as float64). pixels_sha256: `pixels_digest` of the decoded
    image the detections were made on ("" when the golden set predates it).
    """

    image: str
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    pixels_sha256: str = ""

    def to_dict(self) -> Dict[str, Any]:
        document = {
            "image": self.image,
            "boxes": [[round(float(v), 3) for v in box] for box in self.boxes],
            "scores": [round(float(s), 5) for s in self.scores],
            "class_ids": [int(c) for c in self.class_ids],
        }  # type: Dict[str, Any]
        if self.pixels_sha256:
            document["pixels_sha256"] = self.pixels_sha256
        return document

    @classmethod
    def from_dict(cls, entry: Any, where: str = GOLDEN_JSON) -> GoldenEntry:
        """Parse one golden.json entry; BundleError naming the entry when it is malformed."""
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise BundleError('{}: each entry needs an "image" name, got {!r}'.format(where, entry))
        try:
            boxes = np.asarray(entry.get("boxes", []), np.float64).reshape(-1, 4)
            scores = np.asarray(entry.get("scores", []), np.float64).reshape(-1)
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
        pixels_sha256 = entry.get("pixels_sha256", "")
        if not isinstance(pixels_sha256, str):
            raise BundleError("{}: entry {} has a malformed pixels_sha256".format(where, entry["image"]))
        return cls(entry["image"], boxes, scores, class_ids, pixels_sha256)


@dataclass(frozen=True)
class GoldenSet:
    """A parsed golden.json: the threshold the expected detections were cut at, and the entries."""

    score_threshold: float
    entries: Tuple[GoldenEntry, ...]


def parse_golden(document: Any, default_threshold: float) -> GoldenSet:
    """golden.json's content (either shape, see the module doc) as a GoldenSet. Raises BundleError."""
    threshold = default_threshold
    if isinstance(document, dict):
        value = document.get("score_threshold", threshold)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BundleError("{}: score_threshold must be a number, got {!r}".format(GOLDEN_JSON, value))
        threshold = float(value)
        document = document.get("images")
    if not isinstance(document, list):
        raise BundleError(
            '{} must list {{"image", "boxes", "scores", "class_ids"}} entries (or hold them under "images")'.format(
                GOLDEN_JSON
            )
        )
    return GoldenSet(threshold, tuple(GoldenEntry.from_dict(entry) for entry in document))


def load_golden(bundle: ModelFiles) -> Optional[GoldenSet]:
    """The golden set of an opened Bundle or InstalledBundle, None when it carries no golden.json."""
    if bundle.manifest.file(GOLDEN_JSON) is None:
        return None
    try:
        document = json.loads(bundle.path_of(GOLDEN_JSON).read_text(encoding="utf-8"))
    except OSError as exc:
        raise BundleError("cannot read {}: {}".format(GOLDEN_JSON, exc)) from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise BundleError("{} is not valid JSON: {}".format(GOLDEN_JSON, exc)) from None
    return parse_golden(document, bundle.manifest.postprocess.score_threshold)


def _check_image(image: Any, index: Any) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError("golden image {}: expected an (H, W, 3) uint8 BGR array".format(index))


def pixels_digest(image: np.ndarray) -> str:
    """sha256 hex of an (H, W, 3) uint8 image's shape and pixels."""
    digest = hashlib.sha256("{}x{}x{}:".format(*image.shape).encode("ascii"))
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def encode_golden_image(image: np.ndarray, quality: int = GOLDEN_JPEG_QUALITY) -> bytes:
    """JPEG file bytes of an (H, W, 3) uint8 BGR image at `quality` (1-100). Raises DataError."""
    import cv2

    _check_image(image, "to encode")
    if not 1 <= int(quality) <= 100:
        raise DataError("golden JPEG quality must be within 1..100, got {}".format(quality))
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DataError("cannot encode a golden image as JPEG")
    return encoded.tobytes()


def decode_golden_image(data: bytes, name: str = "golden image") -> np.ndarray:
    """The (H, W, 3) uint8 BGR pixels of an encoded image file (JPEG, PNG, ...), exactly as the
    robot's check reads them. Raises BundleError naming `name` when it does not decode."""
    import cv2

    image = None
    if data:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BundleError("{}: cannot decode it".format(name))
    return image


def read_golden_image(bundle: ModelFiles, entry: GoldenEntry) -> np.ndarray:
    """The (H, W, 3) uint8 BGR image of a golden entry (JPEG, or PNG in older bundles). Raises BundleError."""
    where = "golden image {}".format(entry.image)
    try:
        data = bundle.path_of(entry.image).read_bytes()
    except EdgeSdkError as exc:
        raise BundleError("{}: {}".format(where, exc)) from None
    except OSError as exc:
        raise BundleError("{}: cannot read it: {}".format(where, exc)) from None
    return decode_golden_image(data, where)


def _image_extension(data: bytes, index: int) -> str:
    for signature, ext in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return ext
    raise DataError("golden image {}: the bytes are neither a JPEG nor a PNG file".format(index))


def golden_files(
    samples: Sequence[Tuple[Any, Any]], score_threshold: Optional[float] = None, ext: str = ".png"
) -> Dict[str, bytes]:
    """Bundle members from (image, Detections) pairs, for write_bundle's files.

    image: the bytes of a JPEG or PNG file (see encode_golden_image), stored as they are under
    calibration/golden/<i>.jpg or .png (the detections must be those on its decoded pixels), or an
    (H, W, 3) uint8 BGR array, encoded as `ext` (lossless ".png": the detections on the array hold).
    Returns {"calibration/golden/0.jpg": ..., "calibration/golden.json": ...}; golden.json is a
    plain list, or names score_threshold (the threshold the detections were cut at) when given.
    """
    import cv2

    files = {}  # type: Dict[str, bytes]
    entries = []
    for index, (image, detections) in enumerate(samples):
        if isinstance(image, (bytes, bytearray)):
            data = bytes(image)
            image_ext = _image_extension(data, index)
            pixels = decode_golden_image(data, "golden image {}".format(index))
        else:
            _check_image(image, index)
            ok, encoded = cv2.imencode(ext, image)
            if not ok:
                raise DataError("cannot encode golden image {} as {}".format(index, ext))
            data, image_ext, pixels = encoded.tobytes(), ext, image
        name = "{}/{}{}".format(GOLDEN_DIR, index, image_ext)
        files[name] = data
        entry = GoldenEntry(name, detections.boxes, detections.scores, detections.class_ids, pixels_digest(pixels))
        entries.append(entry.to_dict())
    document = entries if score_threshold is None else {"score_threshold": float(score_threshold), "images": entries}
    files[GOLDEN_JSON] = (json.dumps(document, indent=1) + "\n").encode("utf-8")
    return files


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of xyxy boxes a (N, 4) and b (M, 4); 0 where the union is empty."""
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


@dataclass(frozen=True)
class GoldenComparison:
    """One golden image compared: `expected` boxes, `matched` of them, and one line per counted
    unmatched box (a missing expected box or an extra detection; borderline boxes are not counted).
    pixels_match: whether the robot decoded the workstation's pixels (None: not known)."""

    image: str
    expected: int
    matched: int
    problems: Tuple[str, ...]
    pixels_match: Optional[bool] = None

    @property
    def unmatched(self) -> int:
        return len(self.problems)

    @property
    def counted(self) -> int:
        """Boxes that count towards a miss fraction: matched plus unmatched."""
        return self.matched + self.unmatched

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def report(self) -> str:
        """One line: "<image>: m/n expected boxes matched[, k problem(s): <the first three>]", with
        " (decoded pixels differ from the workstation's)" after the count when they do."""
        summary = "{}: {}/{} expected boxes matched".format(self.image, self.matched, self.expected)
        if self.pixels_match is False:
            summary += " (decoded pixels differ from the workstation's)"
        if not self.problems:
            return summary
        shown = "; ".join(self.problems[:3]) + ("; ..." if len(self.problems) > 3 else "")
        return "{}, {} problem(s): {}".format(summary, len(self.problems), shown)


def compare_golden(
    detections: Any,
    entry: GoldenEntry,
    iou: float = 0.9,
    score_tolerance: float = 0.05,
    score_threshold: Optional[float] = None,
) -> GoldenComparison:
    """Do `detections` (Detections) reproduce a golden entry?

    Each expected box, highest score first, matches the unused detection of the same class with
    |score difference| <= score_tolerance and the highest IoU, if that IoU >= iou. score_threshold
    (the threshold the expected detections were cut at): an expected box or an extra detection
    scoring below score_threshold + score_tolerance may be missing or extra without counting
    (engines disagree at the edge of the threshold); None counts every box.
    """
    boxes = np.asarray(detections.boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(detections.scores, np.float64).reshape(-1)
    class_ids = np.asarray(detections.class_ids, np.int32).reshape(-1)
    expected_scores = np.asarray(entry.scores, np.float64)
    borderline = None if score_threshold is None else float(score_threshold) + score_tolerance
    overlaps = box_iou(entry.boxes, boxes)
    used = np.zeros(len(boxes), bool)
    problems = []  # type: List[str]
    matched = 0
    for i in np.argsort(-expected_scores, kind="stable"):
        fits = (
            (~used)
            & (class_ids == entry.class_ids[i])
            & (overlaps[i] >= iou)
            & (np.abs(scores - expected_scores[i]) <= score_tolerance)
        )
        if fits.any():
            used[int(np.argmax(np.where(fits, overlaps[i], -1.0)))] = True
            matched += 1
        elif borderline is None or expected_scores[i] >= borderline:
            problems.append(_describe_miss(entry, int(i), scores, class_ids, used, overlaps[i]))
    for j in np.flatnonzero(~used):
        if borderline is None or scores[j] >= borderline:
            problems.append(
                "extra class {} score {:.3f} at {}".format(int(class_ids[j]), scores[j], _box_text(boxes[j]))
            )
    return GoldenComparison(entry.image, len(entry.boxes), matched, tuple(problems))


def _box_text(box: np.ndarray) -> str:
    return "[{}]".format(", ".join("{:.1f}".format(float(v)) for v in box))


def _describe_miss(
    entry: GoldenEntry, i: int, scores: np.ndarray, class_ids: np.ndarray, used: np.ndarray, overlaps: np.ndarray
) -> str:
    """The problem line of expected box i: where it was, and the nearest unused same-class detection."""
    what = "missing class {} score {:.3f} at {}".format(
        int(entry.class_ids[i]), float(entry.scores[i]), _box_text(entry.boxes[i])
    )
    same_class = (~used) & (class_ids == entry.class_ids[i])
    if not same_class.any():
        return what
    j = int(np.argmax(np.where(same_class, overlaps, -1.0)))
    return "{} (nearest: IoU {:.2f}, score {:.3f})".format(what, float(overlaps[j]), float(scores[j]))


def check_golden(
    detector: Any, bundle: ModelFiles, golden: GoldenSet, iou: float = 0.9, score_tolerance: float = 0.05
) -> List[GoldenComparison]:
    """Run `detector` (device.detector.Detector) on every golden image of `bundle` and compare.

    Detects at score_threshold - score_tolerance so that boxes just below the threshold can still
    match; borderline boxes do not count (see compare_golden). Each result's pixels_match says
    whether the decoded image is the workstation's (None for golden sets without pixels_sha256).
    Raises BundleError for a missing or undecodable image.
    """
    threshold = golden.score_threshold
    results = []
    for entry in golden.entries:
        image = read_golden_image(bundle, entry)
        found = detector.detect(image, score_threshold=max(0.0, threshold - score_tolerance))
        result = compare_golden(found, entry, iou, score_tolerance, threshold)
        if entry.pixels_sha256:
            result = replace(result, pixels_match=pixels_digest(image) == entry.pixels_sha256)
        results.append(result)
    return results
