"""Read Pascal VOC annotations (one XML file per image) into a `Dataset`."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from edge_sdk.data.dataset import Dataset, ImageRecord, check_box, image_size_problem, relative_name_problem
from edge_sdk.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG", ".BMP")
LABEL_FILES = ("labels.txt", "label_list.txt")


class _Object:
    __slots__ = ("name", "box", "difficult")

    def __init__(self, name: str, box: List[float], difficult: bool):
        self.name, self.box, self.difficult = name, box, difficult


def _xml_files(folder: Path) -> Tuple[Path, Path]:
    """(folder holding the XML files, folder holding the images)."""
    if (folder / "Annotations").is_dir():
        images = folder / "JPEGImages" if (folder / "JPEGImages").is_dir() else folder / "Annotations"
        return folder / "Annotations", images
    return folder, folder


def _read_labels(folder: Path) -> Tuple[Optional[List[str]], str]:
    for name in LABEL_FILES:
        path = folder / name
        if path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError("{}: cannot read: {}".format(path, exc)) from None
            labels = [line.strip() for line in lines if line.strip()]
            if len(set(labels)) != len(labels):
                raise DataError("{}: a class name is listed twice".format(path))
            if not labels:
                raise DataError("{}: lists no classes".format(path))
            return labels, name
    return None, ""


def _text(element: ElementTree.Element, tag: str) -> Optional[str]:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _number(element: ElementTree.Element, tag: str, where: str) -> float:
    text = _text(element, tag)
    if text is None:
        raise DataError("{}: <bndbox> has no <{}>".format(where, tag))
    try:
        value = float(text)
    except ValueError:
        raise DataError("{}: <{}> is not a number ({!r})".format(where, tag, text)) from None
    if not math.isfinite(value):
        raise DataError("{}: <{}> is not finite ({!r})".format(where, tag, text))
    return value


def _parse(xml_path: Path, shown: str) -> ElementTree.Element:
    try:
        data = xml_path.read_bytes()
    except OSError as exc:
        raise DataError("{}: cannot read: {}".format(shown, exc.strerror or exc)) from None
    # VOC files never need a DTD; refusing one rules out entity expansion and external entities.
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DataError("{}: DOCTYPE and entity declarations are not allowed".format(shown))
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise DataError("{}: malformed XML: {}".format(shown, exc)) from None
    if root.tag != "annotation":
        raise DataError("{}: root element is <{}>, expected <annotation>".format(shown, root.tag))
    return root


def _objects(root: ElementTree.Element, width: int, height: int, shown: str) -> List[_Object]:
    objects = []
    for number, element in enumerate(root.findall("object"), start=1):
        where = "{}: object {}".format(shown, number)
        name = _text(element, "name")
        if name is None:
            raise DataError("{} has no <name>".format(where))
        bndbox = element.find("bndbox")
        if bndbox is None:
            raise DataError("{} ({}) has no <bndbox>".format(where, name))
        x1, y1 = _number(bndbox, "xmin", where), _number(bndbox, "ymin", where)
        x2, y2 = _number(bndbox, "xmax", where), _number(bndbox, "ymax", where)
        written = "{}: bndbox (xmin {:g}, ymin {:g}, xmax {:g}, ymax {:g})".format(where, x1, y1, x2, y2)
        check_box((x1, y1, x2, y2), width, height, written)
        difficult = _text(element, "difficult") or "0"
        if difficult not in ("0", "1"):
            raise DataError("{}: <difficult> must be 0 or 1, got {!r}".format(where, difficult))
        objects.append(_Object(name, [x1, y1, x2, y2], difficult == "1"))
    return objects


def _find_image(root: ElementTree.Element, xml_path: Path, image_dir: Path, shown: str) -> Path:
    file_name = _text(root, "filename")
    escape = relative_name_problem(file_name) if file_name else None
    if escape is not None:
        raise DataError(
            "{}: <filename> {!r} {}: image files must be inside the dataset folder".format(shown, file_name, escape)
        )
    candidates = []
    if file_name:
        candidates.append(image_dir / file_name)
        if not Path(file_name).suffix:
            candidates.extend(image_dir / (file_name + ext) for ext in IMAGE_EXTENSIONS)
    candidates.extend(image_dir / (xml_path.stem + ext) for ext in IMAGE_EXTENSIONS)
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    wanted = "'{}'".format(file_name) if file_name else "for '{}'".format(xml_path.stem)
    raise DataError("{}: image file {} not found in {}".format(shown, wanted, image_dir))


def _image_size(root: ElementTree.Element, image_path: Path, shown: str) -> Tuple[int, int]:
    size = root.find("size")
    if size is not None:
        width, height = _text(size, "width"), _text(size, "height")
        try:
            w, h = int(float(width or 0)), int(float(height or 0))
        except (ValueError, OverflowError):
            raise DataError(
                "{}: <size> has a width or height that is not a number ({!r} x {!r})".format(shown, width, height)
            ) from None
        if w > 0 and h > 0:
            problem = image_size_problem(w, h)
            if problem is not None:
                raise DataError("{}: <size> {}".format(shown, problem))
            return w, h
    import cv2  # only for files whose <size> is missing or zero

    image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError("{}: no <size>, and the image {} cannot be read".format(shown, image_path))
    return int(image.shape[1]), int(image.shape[0])


def load_voc(folder: Union[str, Path], split: Optional[str] = None) -> Dataset:
    """Read a Pascal VOC dataset.

    Layouts: `folder/Annotations/*.xml` with images in `folder/JPEGImages/`, or XML files beside
    their images in `folder`. Classes come from `labels.txt` or `label_list.txt` in `folder` when
    present (one per line, in class-id order), else the sorted names found. `difficult` objects get
    iscrowd=True (ignored by evaluation). Boxes are read as written (xmin, ymin, xmax, ymax), no
    1-pixel shift. split: a name in `ImageSets/Main/<split>.txt` to read only those images.
    A <filename> that is absolute or has a '..' part is refused, and every box must lie inside its
    image (see `check_box`): one bad entry makes the dataset an error, raised as DataError naming
    the XML file, the object and the field.
    """
    root_folder = Path(folder)
    if not root_folder.is_dir():
        raise DataError("{}: no such folder".format(folder))
    xml_dir, image_dir = _xml_files(root_folder)
    if split is not None:
        list_path = root_folder / "ImageSets" / "Main" / "{}.txt".format(split)
        if not list_path.is_file():
            raise DataError("{}: split '{}' has no list file {}".format(folder, split, list_path))
        stems = [line.split()[0] for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        xml_paths = [xml_dir / (stem + ".xml") for stem in stems]
        for stem, xml_path in zip(stems, xml_paths):
            if not xml_path.is_file():
                raise DataError("{}: lists '{}' but {} does not exist".format(list_path, stem, xml_path))
    else:
        xml_paths = sorted(p for p in xml_dir.glob("*.xml") if p.is_file())
    if not xml_paths:
        raise DataError("{}: no VOC annotation files (*.xml) found in {}".format(folder, xml_dir))

    labels, label_file = _read_labels(root_folder)
    parsed = []
    for xml_path in xml_paths:
        shown = str(Path(folder) / xml_path.relative_to(root_folder))
        root = _parse(xml_path, shown)
        image_path = _find_image(root, xml_path, image_dir, shown)
        width, height = _image_size(root, image_path, shown)
        objects = _objects(root, width, height, shown)
        parsed.append((shown, image_path, width, height, objects))

    if labels is None:
        classes = sorted({obj.name for _, _, _, _, objects in parsed for obj in objects})
    else:
        classes = labels
    class_id = {name: index for index, name in enumerate(classes)}
    records = []
    for image_id, (shown, image_path, width, height, objects) in enumerate(parsed, start=1):
        for number, obj in enumerate(objects, start=1):
            if obj.name not in class_id:
                raise DataError("{}: object {}: class '{}' is not in {}".format(shown, number, obj.name, label_file))
        boxes = np.array([obj.box for obj in objects], np.float32).reshape(-1, 4)
        records.append(
            ImageRecord(
                path=image_path,
                image_id=image_id,
                width=width,
                height=height,
                boxes=boxes,
                class_ids=np.array([class_id[obj.name] for obj in objects], np.int32),
                iscrowd=np.array([obj.difficult for obj in objects], bool),
                areas=((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32),
            )
        )
    return Dataset(classes=tuple(classes), images=tuple(records), source=root_folder.resolve())
