"""Pascal VOC reader: both layouts, label files, difficult objects, and one DataError per bad entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_sdk.data import load_dataset, load_voc
from edge_sdk.errors import DataError

OBJECT = "<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{box}</bndbox></object>"


def _box(x1: object, y1: object, x2: object, y2: object) -> str:
    return "<xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax>".format(x1, y1, x2, y2)


def _xml(
    file_name: str, objects: str, size: str = "<size><width>64</width><height>48</height><depth>3</depth></size>"
) -> str:
    return "<annotation><folder>x</folder><filename>{}</filename>{}{}</annotation>".format(file_name, size, objects)


def _voc(folder: Path, files: dict, labels: str = "") -> Path:
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "JPEGImages").mkdir(exist_ok=True)
    for stem, text in files.items():
        (folder / "Annotations" / (stem + ".xml")).write_text(text)
        (folder / "JPEGImages" / (stem + ".jpg")).write_bytes(b"jpeg bytes, not decoded")
    if labels:
        (folder / "labels.txt").write_text(labels)
    return folder


def _two_images(folder: Path, labels: str = "") -> Path:
    return _voc(
        folder,
        {
            "0001": _xml(
                "0001.jpg",
                OBJECT.format(name="spur", difficult=0, box=_box(1, 2, 11, 22))
                + OBJECT.format(name="short", difficult=1, box=_box(5.5, 6, 9.5, 8)),
            ),
            "0002": _xml("0002.jpg", ""),
        },
        labels,
    )


def test_round_trip_with_sorted_names(tmp_path: Path) -> None:
    dataset = load_voc(_two_images(tmp_path))
    assert dataset.classes == ("short", "spur")
    first, second = dataset.images
    assert first.path == (tmp_path / "JPEGImages" / "0001.jpg").resolve()
    assert (first.image_id, first.width, first.height) == (1, 64, 48)
    np.testing.assert_allclose(first.boxes, [[1, 2, 11, 22], [5.5, 6, 9.5, 8]])
    assert first.class_ids.tolist() == [1, 0]
    assert first.iscrowd.tolist() == [False, True]  # difficult -> ignored like a crowd region
    np.testing.assert_allclose(first.areas, [200.0, 8.0])
    assert second.boxes.shape == (0, 4)
    assert load_dataset(tmp_path).classes == dataset.classes


def test_label_file_sets_class_order(tmp_path: Path) -> None:
    dataset = load_voc(_two_images(tmp_path, labels="spur\nmissing_hole\nshort\n"))
    assert dataset.classes == ("spur", "missing_hole", "short")
    assert dataset.images[0].class_ids.tolist() == [0, 2]


def test_xml_beside_images(tmp_path: Path) -> None:
    (tmp_path / "p.xml").write_text(_xml("p.png", OBJECT.format(name="spur", difficult=0, box=_box(0, 0, 4, 4))))
    (tmp_path / "p.png").write_bytes(b"png")
    dataset = load_dataset(tmp_path)
    assert dataset.images[0].path == (tmp_path / "p.png").resolve()
    assert dataset.classes == ("spur",)


def test_missing_size_reads_the_image(tmp_path: Path) -> None:
    import cv2

    (tmp_path / "q.xml").write_text(_xml("q.png", "", size=""))
    cv2.imwrite(str(tmp_path / "q.png"), np.zeros((30, 40, 3), np.uint8))
    record = load_voc(tmp_path).images[0]
    assert (record.width, record.height) == (40, 30)


def test_split_list(tmp_path: Path) -> None:
    _two_images(tmp_path)
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("0002\n")
    dataset = load_voc(tmp_path, split="val")
    assert [r.path.name for r in dataset.images] == ["0002.jpg"]


CASES = [
    ("<object><bndbox>{}</bndbox></object>".format(_box(1, 1, 2, 2)), r"Annotations/0003\.xml: object 1 has no <name>"),
    (
        OBJECT.format(name="spur", difficult=0, box=_box(1, 1, 5, 5)) + "<object><name> </name></object>",
        r"Annotations/0003\.xml: object 2 has no <name>",
    ),
    (
        OBJECT.format(name="spur", difficult=0, box=_box(50, 1, 40, 5)),
        r"object 1: bndbox \(xmin 50, ymin 1, xmax 40, ymax 5\) has negative width",
    ),
    (OBJECT.format(name="spur", difficult=0, box=_box(1, 9, 4, 5)), r"object 1: bndbox .* has negative height"),
    (OBJECT.format(name="spur", difficult=0, box=_box(4, 1, 4, 5)), r"object 1: bndbox .* has zero area"),
    (
        OBJECT.format(name="spur", difficult=0, box=_box(1, 1, "1e39", 5)),
        r"object 1: bndbox \(xmin 1, ymin 1, xmax 1e\+39, ymax 5\) is outside the 64 x 48 image \(right edge at 1e\+39\)",
    ),
    (
        OBJECT.format(name="spur", difficult=0, box=_box(1, "1e308", 4, "1e308")),
        r"object 1: bndbox .* is outside the 64 x 48 image \(top edge at 1e\+308\)",
    ),
    (
        OBJECT.format(name="spur", difficult=0, box=_box(1, 40, 4, 60)),
        r"object 1: bndbox .* is outside the 64 x 48 image \(bottom edge at 60\)",
    ),
    (OBJECT.format(name="spur", difficult=0, box=_box(1, "inf", 4, 5)), r"object 1: <ymin> is not finite"),
    (OBJECT.format(name="spur", difficult=0, box=_box("a", 1, 4, 5)), r"object 1: <xmin> is not a number \('a'\)"),
    (OBJECT.format(name="spur", difficult=0, box="<xmin>1</xmin>"), r"object 1: <bndbox> has no <ymin>"),
    ("<object><name>spur</name></object>", r"object 1 \(spur\) has no <bndbox>"),
    (OBJECT.format(name="spur", difficult=3, box=_box(1, 1, 4, 5)), r"object 1: <difficult> must be 0 or 1"),
]


@pytest.mark.parametrize("objects, message", CASES)
def test_bad_object_names_file_and_object(tmp_path: Path, objects: str, message: str) -> None:
    _voc(tmp_path, {"0001": _xml("0001.jpg", ""), "0003": _xml("0003.jpg", objects)})
    with pytest.raises(DataError, match=message) as info:
        load_voc(tmp_path)
    assert "\n" not in str(info.value)


def test_malformed_xml(tmp_path: Path) -> None:
    _voc(tmp_path, {"0003": "<annotation><filename>0003.jpg</filename><object>"})
    with pytest.raises(DataError, match=r"Annotations/0003\.xml: malformed XML"):
        load_voc(tmp_path)


def test_entities_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    text = '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file://{}">]>'.format(secret) + _xml(
        "0003.jpg", "<object><name>&x;</name></object>"
    )
    _voc(tmp_path, {"0003": text})
    with pytest.raises(DataError, match=r"0003\.xml: DOCTYPE and entity declarations are not allowed"):
        load_voc(tmp_path)


def test_missing_image_file(tmp_path: Path) -> None:
    _voc(tmp_path, {"0003": _xml("0003.jpg", "")})
    (tmp_path / "JPEGImages" / "0003.jpg").unlink()
    with pytest.raises(DataError, match=r"Annotations/0003\.xml: image file '0003\.jpg' not found"):
        load_voc(tmp_path)


def test_class_not_in_label_file(tmp_path: Path) -> None:
    _two_images(tmp_path, labels="spur\n")
    with pytest.raises(DataError, match=r"0001\.xml: object 2: class 'short' is not in labels\.txt"):
        load_voc(tmp_path)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no VOC annotation files"):
        load_voc(tmp_path)
    with pytest.raises(DataError, match="no COCO .json file or VOC annotations"):
        load_dataset(tmp_path)


def test_box_may_touch_the_border(tmp_path: Path) -> None:
    _voc(tmp_path, {"0003": _xml("0003.jpg", OBJECT.format(name="spur", difficult=0, box=_box(0, 0, 65, 48)))})
    np.testing.assert_allclose(load_voc(tmp_path).images[0].boxes, [[0, 0, 65, 48]])  # VOC's 1-based pixels


@pytest.mark.parametrize("file_name", ["../../../../etc/passwd", "/etc/passwd", "JPEGImages/../../outside.jpg"])
def test_filename_outside_the_dataset_folder_is_refused(tmp_path: Path, file_name: str) -> None:
    (tmp_path.parent / "outside.jpg").write_bytes(b"outside the dataset")
    _voc(tmp_path, {"0003": _xml(file_name, "")})
    with pytest.raises(DataError, match=r"0003\.xml: <filename> .* image files must be inside the dataset folder"):
        load_voc(tmp_path)


@pytest.mark.parametrize("size", ["inf", "1e39", "70000"])
def test_impossible_image_size(tmp_path: Path, size: str) -> None:
    size_xml = "<size><width>{}</width><height>48</height></size>".format(size)
    _voc(tmp_path, {"0003": _xml("0003.jpg", "", size=size_xml)})
    with pytest.raises(DataError, match=r"0003\.xml: <size> "):
        load_voc(tmp_path)
