"""Read COCO detection JSON (images, annotations, categories) into a `Dataset`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from edge_sdk.data.dataset import Dataset, ImageRecord, check_box, image_size_problem, relative_name_problem
from edge_sdk.errors import DataError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _image_dirs(json_path: Path) -> List[Path]:
    """Where file names are looked up: the JSON's folder, its images/ sibling, and ../images (annotations/ layout)."""
    folder = json_path.parent
    return [folder, folder / "images", folder.parent / "images"]


def _resolve_image(file_name: str, dirs: Sequence[Path]) -> Path:
    candidate = Path(file_name)
    for folder in dirs:
        path = folder / candidate
        if path.is_file():
            return path.resolve()
    return Path()


def load_coco(json_path: Union[str, Path]) -> Dataset:
    """Read a COCO detection file.

    Classes are the categories sorted by id, mapped to contiguous 0-based class ids. Boxes become
    xyxy pixels (COCO's [x, y, w, h] -> [x, y, x + w, y + h]); `iscrowd` and `area` are kept (area
    defaults to w * h). Images without annotations are kept. Image files are looked up relative to
    the JSON's folder, then its `images/` sibling, then `../images`; a `file_name` that is absolute
    or has a '..' part is refused. Every box must lie inside its image (see `check_box`): one bad
    entry makes the whole file an error, raised as DataError naming the file, the entry and its id.
    """
    path = Path(json_path)
    name = str(json_path)
    if not path.is_file():
        raise DataError("{}: no such file".format(name))
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError("{}: not UTF-8 text ({})".format(name, exc.reason)) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            "{}: not valid JSON: {} (line {}, column {})".format(name, exc.msg, exc.lineno, exc.colno)
        ) from None
    except OSError as exc:
        raise DataError("{}: cannot read: {}".format(name, exc.strerror or exc)) from None
    if not isinstance(document, dict):
        raise DataError("{}: expected a JSON object with images, annotations and categories".format(name))
    for key in ("images", "categories"):
        if key not in document:
            raise DataError("{}: no '{}' list (is this a COCO detection file?)".format(name, key))
    images = _list(document, "images", name)
    categories = _list(document, "categories", name)
    annotations = _list(document, "annotations", name) if "annotations" in document else []

    class_of_category, classes = _read_categories(categories, name)
    dirs = _image_dirs(path)
    order: List[int] = []
    headers: Dict[int, Tuple[Path, int, int]] = {}
    for i, image in enumerate(images):
        where = "{}: images[{}]".format(name, i)
        if not isinstance(image, dict):
            raise DataError("{}: is not an object".format(where))
        image_id = image.get("id")
        if not _is_int(image_id):
            raise DataError("{}: 'id' must be an integer, got {!r}".format(where, image_id))
        if image_id in headers:
            raise DataError("{}: duplicate image id {}".format(where, image_id))
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DataError("{}: 'file_name' must be a non-empty string, got {!r}".format(where, file_name))
        escape = relative_name_problem(file_name)
        if escape is not None:
            raise DataError(
                "{}: 'file_name' {!r} {}: image files must be inside the dataset folder".format(
                    where, file_name, escape
                )
            )
        width, height = image.get("width"), image.get("height")
        size_problem = image_size_problem(width, height)
        if size_problem is not None:
            raise DataError("{}: {}".format(where, size_problem))
        image_path = _resolve_image(file_name, dirs)
        if image_path == Path():
            looked = ", ".join(str(d) for d in dirs)
            raise DataError("{}: image file '{}' not found (looked in {})".format(where, file_name, looked))
        headers[image_id] = (image_path, width, height)
        order.append(image_id)

    boxes: Dict[int, List[List[float]]] = {image_id: [] for image_id in order}
    labels: Dict[int, List[int]] = {image_id: [] for image_id in order}
    crowds: Dict[int, List[bool]] = {image_id: [] for image_id in order}
    areas: Dict[int, List[float]] = {image_id: [] for image_id in order}
    for i, annotation in enumerate(annotations):
        where = "{}: annotations[{}]".format(name, i)
        if not isinstance(annotation, dict):
            raise DataError("{}: is not an object".format(where))
        if "id" in annotation:
            where += " (id {!r})".format(annotation["id"])
        image_id = annotation.get("image_id")
        if not _is_int(image_id) or image_id not in headers:
            raise DataError("{}: unknown image_id {!r}".format(where, image_id))
        category_id = annotation.get("category_id")
        if not _is_int(category_id) or category_id not in class_of_category:
            raise DataError("{}: unknown category id {!r}".format(where, category_id))
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError("{}: bbox must be a list of 4 finite numbers [x, y, w, h], got {!r}".format(where, bbox))
        x, y, w, h = (float(v) for v in bbox)
        _, width, height = headers[image_id]
        check_box((x, y, x + w, y + h), width, height, "{}: bbox {!r}".format(where, bbox))
        iscrowd = annotation.get("iscrowd", 0)
        if iscrowd not in (0, 1) or isinstance(iscrowd, float):
            raise DataError("{}: iscrowd must be 0 or 1, got {!r}".format(where, iscrowd))
        area = annotation.get("area", w * h)
        if not _is_number(area) or not 0 <= area <= width * height:
            raise DataError(
                "{}: area must be a number in 0..{} (the image's area), got {!r}".format(where, width * height, area)
            )
        boxes[image_id].append([x, y, x + w, y + h])
        labels[image_id].append(class_of_category[category_id])
        crowds[image_id].append(bool(iscrowd))
        areas[image_id].append(float(area))

    records = []
    for image_id in order:
        image_path, width, height = headers[image_id]
        records.append(
            ImageRecord(
                path=image_path,
                image_id=image_id,
                width=width,
                height=height,
                boxes=np.array(boxes[image_id], np.float32).reshape(-1, 4),
                class_ids=np.array(labels[image_id], np.int32),
                iscrowd=np.array(crowds[image_id], bool),
                areas=np.array(areas[image_id], np.float32),
            )
        )
    return Dataset(classes=tuple(classes), images=tuple(records), source=path.resolve())


def _list(document: Dict[str, Any], key: str, name: str) -> List[Any]:
    value = document[key]
    if not isinstance(value, list):
        raise DataError("{}: '{}' must be a list, got {}".format(name, key, type(value).__name__))
    return value


def _read_categories(categories: List[Any], name: str) -> Tuple[Dict[int, int], List[str]]:
    """category id -> 0-based class id (in category-id order), and the class names."""
    seen: Dict[int, str] = {}
    for i, category in enumerate(categories):
        where = "{}: categories[{}]".format(name, i)
        if not isinstance(category, dict):
            raise DataError("{}: is not an object".format(where))
        category_id, category_name = category.get("id"), category.get("name")
        if not _is_int(category_id):
            raise DataError("{}: 'id' must be an integer, got {!r}".format(where, category_id))
        if not isinstance(category_name, str) or not category_name:
            raise DataError("{}: 'name' must be a non-empty string, got {!r}".format(where, category_name))
        if category_id in seen:
            raise DataError("{}: duplicate category id {}".format(where, category_id))
        seen[category_id] = category_name
    if not seen:
        raise DataError("{}: 'categories' is empty".format(name))
    ids = sorted(seen)
    return {category_id: index for index, category_id in enumerate(ids)}, [seen[i] for i in ids]
