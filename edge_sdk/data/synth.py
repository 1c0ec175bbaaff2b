"""Procedural PCB-defect images: the SDK's built-in default dataset.

Green solder-mask boards with copper traces (straight and 45-degree segments), through-hole
component pads, trace buses ending in vias, silkscreen outlines and labels, under a random
lighting gradient, colour shift, blur and sensor noise. Each image carries 1 to 4 defects of the
six classes in `CLASSES`, drawn on the board structures:

- missing_hole: a component pad without its drilled hole (a solid gold disc);
- mouse_bite: semicircular bites out of one edge of a trace;
- open_circuit: a gap cut across a trace;
- short: a copper bridge between two adjacent traces of a bus;
- spur: a thin tapered protrusion from a trace edge into free board;
- spurious_copper: an isolated irregular copper blob in free board.

Defects are 14 to about 40 px at the default 256x256 (everything scales with the image size), so a
small YOLOv3 at 160-192 px input can learn them. The same `(seed, index)` always gives the same
image: every image has its own `numpy.random.Generator` seeded from both, and drawing uses
OpenCV only, so images can be rendered in any order or in parallel.

Files written by `synthesize`: `out_dir/images/NNNNNN.png` (PNG: lossless, so the pixels a model
trains on are exactly the rendered ones), then `out_dir/val.json` and `out_dir/train.json` (COCO
detection format, `file_name` relative to `images/`, category ids 1..6 in `CLASSES` order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from edge_sdk.errors import DataError
from edge_sdk.fileio import atomic_write_bytes
from edge_sdk.progress import progress_bar

CLASSES = ("missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper")
MISSING_HOLE, MOUSE_BITE, OPEN_CIRCUIT, SHORT, SPUR, SPURIOUS_COPPER = range(len(CLASSES))

DEFAULT_SIZE = (256, 256)
GENERATOR_VERSION = 1

_SHIFT = 4  # OpenCV fixed-point drawing: coordinates are in 1/16 pixel
_ONE = 1 << _SHIFT
_MIN_BOX = 14.0  # smallest box side in pixels at 256 px (scaled with the image)
_AA = 16  # cv2.LINE_AA, spelled out so cv2 is imported inside functions only

# The 8 routing directions (unit vectors), axis-aligned first.
_DIRECTIONS = (
    np.array([(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, 1), (-1, -1), (1, -1)], dtype=np.float64)
    / np.array([1, 1, 1, 1, np.sqrt(2), np.sqrt(2), np.sqrt(2), np.sqrt(2)])[:, None]
)

Point = Tuple[float, float]
Box = Tuple[float, float, float, float]


def _fixed(point: Sequence[float]) -> Tuple[int, int]:
    return int(round(point[0] * _ONE)), int(round(point[1] * _ONE))


def _fixed_poly(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.hypot(vector[0], vector[1])), 1e-9)


def _offset_polyline(points: np.ndarray, offset: float) -> np.ndarray:
    """The polyline shifted sideways by `offset` pixels (mitre joins). points: (K, 2)."""
    directions = np.array([_unit(points[i + 1] - points[i]) for i in range(len(points) - 1)])
    normals = np.stack([-directions[:, 1], directions[:, 0]], axis=1)
    out = np.empty_like(points)
    out[0] = points[0] + normals[0] * offset
    out[-1] = points[-1] + normals[-1] * offset
    for i in range(1, len(points) - 1):
        mitre = _unit(normals[i - 1] + normals[i])
        out[i] = points[i] + mitre * offset / float(np.dot(mitre, normals[i]))
    return out


class _Segment:
    """A straight piece of trace: p0 -> p1 (pixels), its width, and its bus/lane if it belongs to one."""

    __slots__ = ("p0", "p1", "width", "bus", "lane", "index")

    def __init__(self, p0: np.ndarray, p1: np.ndarray, width: int, bus: int = -1, lane: int = -1, index: int = -1):
        self.p0, self.p1, self.width = p0, p1, width
        self.bus, self.lane, self.index = bus, lane, index

    @property
    def length(self) -> float:
        return float(np.hypot(*(self.p1 - self.p0)))


class _Bus:
    """Parallel traces: a centre polyline and the sideways offset of each lane."""

    __slots__ = ("centre", "offsets", "pitch", "width")

    def __init__(self, centre: np.ndarray, offsets: List[float], pitch: float, width: int):
        self.centre, self.offsets, self.pitch, self.width = centre, offsets, pitch, width


class _Board:
    """One board being drawn: layout masks, the structures defects attach to, and the defects."""

    def __init__(self, rng: np.random.Generator, width: int, height: int):
        self.rng = rng
        self.w, self.h = width, height
        self.s = min(width, height) / 256.0
        shape = (height, width)
        self.trace = np.zeros(shape, np.uint8)  # copper under solder mask (traces, defects of copper)
        self.pad = np.zeros(shape, np.uint8)  # exposed copper (pads, via rings)
        self.hole = np.zeros(shape, np.uint8)  # drilled holes
        self.silk = np.zeros(shape, np.uint8)  # silkscreen ink
        self.keepout = np.zeros(shape, np.uint8)  # everything placed, grown by the clearance
        self.trace_width = max(2, int(round(rng.integers(6, 10) * self.s)))
        self.gap = max(3.0, float(rng.uniform(7.0, 11.0)) * self.s)
        self.pads: List[Tuple[float, float, float, float, bool]] = []  # x, y, radius, hole radius, component pad
        self.pad_has_trace: List[bool] = []
        self.component_pads: List[int] = []
        self.pad_outward: Dict[int, np.ndarray] = {}  # component pad -> unit vector pointing out of the footprint
        self.segments: List[_Segment] = []
        self.buses: List[_Bus] = []
        self.missing_holes: set = set()
        self.boxes: List[Box] = []
        self.class_ids: List[int] = []

    # ---------------------------------------------------------------- drawing primitives

    def _draw_polyline(self, mask: np.ndarray, points: np.ndarray, thickness: int, value: int = 255) -> None:
        import cv2

        cv2.polylines(mask, [_fixed_poly(points)], False, value, max(1, int(thickness)), _AA, _SHIFT)

    def _draw_disc(self, mask: np.ndarray, centre: Point, radius: float, value: int = 255) -> None:
        import cv2

        cv2.circle(mask, _fixed(centre), max(1, int(round(radius * _ONE))), value, -1, _AA, _SHIFT)

    def _blank(self) -> np.ndarray:
        return np.zeros((self.h, self.w), np.uint8)

    def _collides(self, footprint: np.ndarray) -> bool:
        return bool(np.any(np.logical_and(footprint > 127, self.keepout > 127)))

    def _inside(self, point: np.ndarray, margin: float) -> bool:
        return margin <= point[0] <= self.w - 1 - margin and margin <= point[1] <= self.h - 1 - margin

    # ---------------------------------------------------------------- layout

    def lay_out(self) -> None:
        rng = self.rng
        buses = int(rng.integers(1, 3))
        self._attempt(self._add_bus, 80)  # shorts need a bus: place one first, on an empty board
        for _ in range(int(rng.integers(1, 4))):
            self._attempt(self._add_component, 20)
        for _ in range(buses - 1):
            self._attempt(self._add_bus, 30)
        self._add_pad_traces()
        for _ in range(int(rng.integers(2, 6))):
            self._attempt(self._add_free_trace, 15)
        for _ in range(int(rng.integers(1, 5))):
            self._attempt(self._add_via, 15)
        for _ in range(int(rng.integers(1, 4))):
            self._attempt(self._add_label, 15)

    @staticmethod
    def _attempt(action: Callable[[], bool], tries: int) -> bool:
        for _ in range(tries):
            if action():
                return True
        return False

    def _add_pad(self, centre: Point, radius: float, hole_radius: float, component: bool) -> int:
        self._draw_disc(self.pad, centre, radius)
        self._draw_disc(self.keepout, centre, radius + self.gap)
        self.pads.append((float(centre[0]), float(centre[1]), float(radius), float(hole_radius), component))
        self.pad_has_trace.append(False)
        if component:
            self.component_pads.append(len(self.pads) - 1)
        return len(self.pads) - 1

    def _add_component(self) -> bool:
        """A through-hole footprint: one or two rows of round pads inside a silkscreen outline."""
        import cv2

        rng, s = self.rng, self.s
        radius = float(rng.uniform(6.5, 9.5)) * s
        pitch = 2 * radius + float(rng.uniform(6.0, 10.0)) * s
        per_row = int(rng.integers(2, 5))
        rows = int(rng.integers(1, 3))
        row_gap = pitch * float(rng.uniform(2.0, 3.2))
        horizontal = bool(rng.integers(0, 2))
        along = (np.arange(per_row) - (per_row - 1) / 2.0) * pitch
        across = (np.arange(rows) - (rows - 1) / 2.0) * row_gap
        half_along = along[-1] + radius + 5 * s
        half_across = across[-1] + radius + 5 * s
        half_x, half_y = (half_along, half_across) if horizontal else (half_across, half_along)
        margin = 4 * s
        if half_x * 2 + 2 * margin >= self.w or half_y * 2 + 2 * margin >= self.h:
            return False
        cx = float(rng.uniform(half_x + margin, self.w - half_x - margin))
        cy = float(rng.uniform(half_y + margin, self.h - half_y - margin))
        footprint = self._blank()
        top_left = _fixed((cx - half_x - self.gap, cy - half_y - self.gap))
        bottom_right = _fixed((cx + half_x + self.gap, cy + half_y + self.gap))
        cv2.rectangle(footprint, top_left, bottom_right, 255, -1, _AA, _SHIFT)
        if self._collides(footprint):
            return False
        hole_radius = radius * float(rng.uniform(0.38, 0.5))
        for a in along:
            for c in across:
                centre = (cx + a, cy + c) if horizontal else (cx + c, cy + a)
                index = self._add_pad(centre, radius, hole_radius, component=True)
                side = np.sign(c) if rows > 1 else (1.0 if rng.random() < 0.5 else -1.0)
                self.pad_outward[index] = np.array([0.0, side]) if horizontal else np.array([side, 0.0])
        thickness = max(1, int(round(1.3 * s)))
        outline = (_fixed((cx - half_x, cy - half_y)), _fixed((cx + half_x, cy + half_y)))
        cv2.rectangle(self.silk, outline[0], outline[1], 255, thickness, _AA, _SHIFT)
        # pin-1 mark
        self._draw_disc(self.silk, (cx - half_x + 3 * s, cy - half_y + 3 * s), 1.5 * s)
        return True

    def _random_direction(self) -> int:
        return int(self.rng.integers(0, 4)) if self.rng.random() < 0.7 else int(self.rng.integers(4, 8))

    def _turn(self, direction: int) -> int:
        """Turn by +-45 degrees (index into _DIRECTIONS)."""
        angles = [0, 2, 4, 6, 1, 3, 5, 7]  # _DIRECTIONS index -> multiple of 45 degrees
        angle = (angles[direction] + (1 if self.rng.random() < 0.5 else -1)) % 8
        return angles.index(angle)

    def _add_bus(self) -> bool:
        """2-4 parallel traces, 1-3 straight runs joined by 45-degree turns, ending in staggered vias or off-board."""
        rng, s, w = self.rng, self.s, self.trace_width
        lanes = int(rng.integers(2, 5))
        pitch = w + self.gap
        direction = self._random_direction()
        start = np.array([rng.uniform(0.1, 0.9) * self.w, rng.uniform(0.1, 0.9) * self.h])
        if rng.random() < 0.5:  # enter from the board edge
            start = start - _DIRECTIONS[direction] * 400 * s
            start = self._clip_to_edge(start, _DIRECTIONS[direction])
            if start is None:
                return False
        points = [start]
        for k in range(int(rng.integers(1, 4))):
            if k:
                direction = self._turn(direction)
            length = float(rng.uniform(45, 140)) * s
            points.append(points[-1] + _DIRECTIONS[direction] * length)
        centre = np.array(points)
        offsets = [(i - (lanes - 1) / 2.0) * pitch for i in range(lanes)]
        via_radius = min(pitch / 2.0 - 1.5 * s, 5.0 * s)
        lane_points = []
        footprint = self._blank()
        for i, offset in enumerate(offsets):
            lane = _offset_polyline(centre, offset)
            end_inside = self._inside(lane[-1], via_radius + 2)
            if end_inside and i % 2:
                lane[-1] = lane[-1] + _DIRECTIONS[direction] * (2 * via_radius + 3 * s)
            lane_points.append((lane, end_inside))
            self._draw_polyline(footprint, lane, w)
        if self._collides(footprint):
            return False
        bus_id = len(self.buses)
        self.buses.append(_Bus(centre, offsets, pitch, w))
        for i, (lane, end_inside) in enumerate(lane_points):
            self._add_trace(lane, bus=bus_id, lane=i)
            if end_inside and self._inside(lane[-1], via_radius + 1):
                self._add_pad(tuple(lane[-1]), via_radius, via_radius * 0.45, component=False)
        return True

    def _clip_to_edge(self, outside: np.ndarray, direction: np.ndarray) -> Optional[np.ndarray]:
        """Walk from a point off the board along `direction` until just past the board edge."""
        point = outside.copy()
        for _ in range(2000):
            if -6 <= point[0] <= self.w + 5 and -6 <= point[1] <= self.h + 5:
                return point
            point = point + direction
        return None

    def _add_trace(self, points: np.ndarray, bus: int = -1, lane: int = -1) -> None:
        self._draw_polyline(self.trace, points, self.trace_width)
        self._draw_polyline(self.keepout, points, self.trace_width + 2 * int(round(self.gap)))
        for i in range(len(points) - 1):
            self.segments.append(_Segment(points[i], points[i + 1], self.trace_width, bus, lane, i))

    def _route(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """A PCB-style route: one straight run and one 45-degree run (order chosen at random)."""
        delta = end - start
        ax, ay = abs(delta[0]), abs(delta[1])
        if ax >= ay:
            straight = np.array([np.sign(delta[0]) * (ax - ay), 0.0])
        else:
            straight = np.array([0.0, np.sign(delta[1]) * (ay - ax)])
        middle = start + straight if self.rng.random() < 0.5 else end - straight
        points = [start]
        for p in (middle, end):
            if np.hypot(*(p - points[-1])) > 1.0:
                points.append(p)
        return np.array(points)

    def _add_pad_traces(self) -> None:
        """Connect component pads to other pads, to the board edge, or to a new via."""
        rng = self.rng
        order = list(self.component_pads)
        rng.shuffle(order)
        for index in order:
            if self.pad_has_trace[index] or rng.random() < 0.2:
                continue
            for _ in range(12):
                if self._try_pad_trace(index):
                    break

    def _try_pad_trace(self, index: int) -> bool:
        rng, s = self.rng, self.s
        x, y, radius, _, _ = self.pads[index]
        start = np.array([x, y])
        outward = self.pad_outward[index]
        if rng.random() < 0.3:  # leave at 45 degrees
            outward = _unit(outward + np.array([outward[1], -outward[0]]) * (1.0 if rng.random() < 0.5 else -1.0))
        stub = outward * (radius + float(rng.uniform(8, 22)) * s)
        first = start + stub
        choice = rng.random()
        target_pad = -1
        free = [i for i in self.component_pads if i != index and not self.pad_has_trace[i]]
        if choice < 0.25 and free:
            target_pad = free[int(rng.integers(0, len(free)))]
            end = np.array(self.pads[target_pad][:2])
        elif choice < 0.35:
            end = np.array([rng.uniform(0.08, 0.92) * self.w, rng.uniform(0.08, 0.92) * self.h])
        else:  # away from the footprint, bending by up to 45 degrees, to a via or off the board
            reach = float(rng.uniform(20, 130)) * s
            sideways = np.array([outward[1], -outward[0]]) * reach * float(rng.uniform(-1, 1))
            end = first + outward * reach + sideways
        points = np.concatenate([start[None], self._route(first, end)])
        footprint = self._blank()
        self._draw_polyline(footprint, points, self.trace_width)
        # the trace may touch its own pads: ignore its footprint there
        self._draw_disc(footprint, (x, y), radius + self.gap + 2, 0)
        if target_pad >= 0:
            tx, ty, tr, _, _ = self.pads[target_pad]
            self._draw_disc(footprint, (tx, ty), tr + self.gap + 2, 0)
        via_radius = 4.5 * s
        end_via = target_pad < 0 and self._inside(end, via_radius + 2)
        if end_via:
            self._draw_disc(footprint, tuple(end), via_radius)
        if self._collides(footprint):
            return False
        self._add_trace(points)
        self.pad_has_trace[index] = True
        if target_pad >= 0:
            self.pad_has_trace[target_pad] = True
        if end_via:
            self._add_pad(tuple(end), via_radius, via_radius * 0.45, component=False)
        return True

    def _add_free_trace(self) -> bool:
        """A trace between two vias (or a via and the board edge)."""
        rng, s = self.rng, self.s
        start = np.array([rng.uniform(0.05, 0.95) * self.w, rng.uniform(0.05, 0.95) * self.h])
        end = start + _DIRECTIONS[self._random_direction()] * float(rng.uniform(60, 160)) * s
        if rng.random() < 0.5:
            end = end + _DIRECTIONS[int(rng.integers(4, 8))] * float(rng.uniform(20, 60)) * s
        points = self._route(start, end)
        via_radius = 4.5 * s
        footprint = self._blank()
        self._draw_polyline(footprint, points, self.trace_width)
        ends = [p for p in (points[0], points[-1]) if self._inside(p, via_radius + 2)]
        for p in ends:
            self._draw_disc(footprint, tuple(p), via_radius)
        if self._collides(footprint):
            return False
        self._add_trace(points)
        for p in ends:
            self._add_pad(tuple(p), via_radius, via_radius * 0.45, component=False)
        return True

    def _add_via(self) -> bool:
        rng, s = self.rng, self.s
        radius = float(rng.uniform(3.5, 5.0)) * s
        centre = (
            float(rng.uniform(radius + 2, self.w - radius - 2)),
            float(rng.uniform(radius + 2, self.h - radius - 2)),
        )
        footprint = self._blank()
        self._draw_disc(footprint, centre, radius)
        if self._collides(footprint):
            return False
        self._add_pad(centre, radius, radius * 0.45, component=False)
        return True

    def _add_label(self) -> bool:
        import cv2

        rng, s = self.rng, self.s
        text = "{}{}".format("RCUJDQL"[int(rng.integers(0, 7))], int(rng.integers(1, 60)))
        scale = float(rng.uniform(0.3, 0.42)) * s
        thickness = max(1, int(round(s)))
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        if tw + 4 >= self.w or th + baseline + 4 >= self.h:
            return False
        x = int(rng.integers(2, self.w - tw - 2))
        y = int(rng.integers(th + 2, self.h - baseline - 2))
        x0, y0, x1, y1 = x - 2, y - th - 2, x + tw + 2, y + baseline + 2
        if np.any(self.keepout[y0:y1, x0:x1]) or np.any(self.silk[y0:y1, x0:x1]):
            return False
        cv2.putText(self.silk, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness, _AA)
        self.keepout[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = 255
        return True

    # ---------------------------------------------------------------- defects

    def add_defects(self, classes: Sequence[int], stop_after: int = -1) -> None:
        """Try to place one defect of each class in turn (stop after `stop_after` placed, if >= 0)."""
        makers = {
            MISSING_HOLE: self._missing_hole,
            MOUSE_BITE: self._mouse_bite,
            OPEN_CIRCUIT: self._open_circuit,
            SHORT: self._short,
            SPUR: self._spur,
            SPURIOUS_COPPER: self._spurious_copper,
        }
        for class_id in classes:
            for _ in range(40):
                box = makers[class_id]()
                if box is not None:
                    self.boxes.append(box)
                    self.class_ids.append(class_id)
                    break
            if len(self.boxes) == stop_after:
                return

    def _finish_box(self, x0: float, y0: float, x1: float, y1: float, allow_pads: bool = False) -> Optional[Box]:
        """Grow a box to the minimum side, check it is on the board, free of other defects (and pads)."""
        least = _MIN_BOX * self.s
        cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        half_w, half_h = max(x1 - x0, least) / 2.0, max(y1 - y0, least) / 2.0
        box = (cx - half_w, cy - half_h, cx + half_w, cy + half_h)
        if box[0] < 1 or box[1] < 1 or box[2] > self.w - 1 or box[3] > self.h - 1:
            return None
        margin = 3 * self.s
        for other in self.boxes:
            if (
                box[0] - margin < other[2]
                and other[0] < box[2] + margin
                and box[1] - margin < other[3]
                and other[1] < box[3] + margin
            ):
                return None
        if not allow_pads:
            ix0, iy0 = int(np.floor(box[0])), int(np.floor(box[1]))
            ix1, iy1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
            if np.any(self.pad[iy0:iy1, ix0:ix1]):
                return None
        return tuple(round(float(v), 2) for v in box)  # type: ignore[return-value]

    def _trace_site(self, clearance: float) -> Optional[Tuple[_Segment, np.ndarray, np.ndarray, np.ndarray]]:
        """A point on a straight trace run at least `clearance` px from its ends: segment, point, direction, normal."""
        candidates = [seg for seg in self.segments if seg.length > 2 * clearance + 2]
        if not candidates:
            return None
        seg = candidates[int(self.rng.integers(0, len(candidates)))]
        direction = _unit(seg.p1 - seg.p0)
        normal = np.array([-direction[1], direction[0]])
        point = seg.p0 + direction * float(self.rng.uniform(clearance, seg.length - clearance))
        if not self._inside(point, 10 * self.s):
            return None
        return seg, point, direction, normal

    def _missing_hole(self) -> Optional[Box]:
        choices = [i for i in self.component_pads if i not in self.missing_holes]
        if not choices:
            return None
        index = choices[int(self.rng.integers(0, len(choices)))]
        x, y, radius, _, _ = self.pads[index]
        pad = radius + 1.5 * self.s
        box = self._finish_box(x - pad, y - pad, x + pad, y + pad, allow_pads=True)
        if box is not None:
            self.missing_holes.add(index)
        return box

    def _mouse_bite(self) -> Optional[Box]:
        import cv2

        rng, s = self.rng, self.s
        site = self._trace_site(16 * s)
        if site is None:
            return None
        seg, point, direction, normal = site
        half_width = seg.width / 2.0
        bites = int(rng.integers(2, 6))
        radius = max(1.6, float(rng.uniform(0.45, 0.62)) * seg.width)
        spacing = radius * float(rng.uniform(1.5, 2.1))
        while bites > 2 and spacing * (bites - 1) + 2 * radius > 32 * s:
            bites -= 1
        side = 1.0 if rng.random() < 0.5 else -1.0
        offsets = (np.arange(bites) - (bites - 1) / 2.0) * spacing
        centres = []
        for k, along in enumerate(offsets):
            bite_side = side if (k % 2 == 0 or rng.random() < 0.7) else -side
            depth = float(rng.uniform(0.05, 0.25)) * radius
            centres.append(point + direction * along + normal * bite_side * (half_width + radius * 0.35 - depth))
        centres_arr = np.array(centres)
        corners = np.concatenate(
            [
                centres_arr + direction * radius,
                centres_arr - direction * radius,
                point[None] + normal * (half_width + 1.5 * s),
                point[None] - normal * (half_width + 1.5 * s),
            ]
        )
        x0, y0 = corners.min(axis=0)
        x1, y1 = corners.max(axis=0)
        box = self._finish_box(x0, y0, x1, y1)
        if box is None:
            return None
        # bites only remove this trace's copper (never a neighbour's)
        bite_mask = self._blank()
        for centre in centres:
            r = radius * float(rng.uniform(0.85, 1.1))
            self._draw_disc(bite_mask, tuple(centre), r)
        own = self._blank()
        self._draw_polyline(own, np.array([seg.p0, seg.p1]), seg.width + 2)
        cv2.subtract(self.trace, cv2.bitwise_and(bite_mask, own), dst=self.trace)
        return box

    def _open_circuit(self) -> Optional[Box]:
        import cv2

        rng, s = self.rng, self.s
        site = self._trace_site(16 * s)
        if site is None:
            return None
        seg, point, direction, normal = site
        gap = float(rng.uniform(6.0, 11.0)) * s
        across = seg.width / 2.0 + 1.5 * s
        skew = direction * float(rng.uniform(-0.25, 0.25)) * seg.width
        jitter = rng.uniform(-0.6, 0.6, size=(4, 2)) * s
        cut = np.array(
            [
                point - direction * gap / 2 - normal * across - skew,
                point + direction * gap / 2 - normal * across - skew,
                point + direction * gap / 2 + normal * across + skew,
                point - direction * gap / 2 + normal * across + skew,
            ]
        )
        cut = cut + jitter
        context = gap / 2 + 5.0 * s
        corners = np.array(
            [
                point - direction * context - normal * across,
                point + direction * context + normal * across,
                point + direction * context - normal * across,
                point - direction * context + normal * across,
            ]
        )
        x0, y0 = corners.min(axis=0)
        x1, y1 = corners.max(axis=0)
        box = self._finish_box(x0, y0, x1, y1)
        if box is None:
            return None
        cv2.fillPoly(self.trace, [_fixed_poly(cut)], 0, _AA, _SHIFT)
        return box

    def _short(self) -> Optional[Box]:
        rng, s = self.rng, self.s
        if not self.buses:
            return None
        bus = self.buses[int(rng.integers(0, len(self.buses)))]
        run = int(rng.integers(0, len(bus.centre) - 1))
        p0, p1 = bus.centre[run], bus.centre[run + 1]
        length = float(np.hypot(*(p1 - p0)))
        clearance = 0.5 * abs(bus.offsets[0]) + bus.width / 2.0 + 8 * s
        if length < 2 * clearance + 2:
            return None
        direction = _unit(p1 - p0)
        normal = np.array([-direction[1], direction[0]])
        lane = int(rng.integers(0, len(bus.offsets) - 1))
        centre = p0 + direction * float(rng.uniform(clearance, length - clearance))
        a = centre + normal * bus.offsets[lane]
        b = centre + normal * bus.offsets[lane + 1] + direction * float(rng.uniform(-0.3, 0.3)) * bus.pitch
        if not (self._inside(a, 8 * s) and self._inside(b, 8 * s)):
            return None
        thickness = max(2, int(round(float(rng.uniform(3.0, 6.5)) * s)))
        ends = np.array([a, b])
        reach = thickness / 2.0 + 1.0 * s
        x0, y0 = ends.min(axis=0) - reach
        x1, y1 = ends.max(axis=0) + reach
        box = self._finish_box(x0, y0, x1, y1)
        if box is None:
            return None
        middle = (a + b) / 2.0 + direction * float(rng.uniform(-1.0, 1.0)) * s
        self._draw_polyline(self.trace, np.array([a, middle, b]), thickness)
        blob = float(rng.uniform(0.3, 0.6)) * thickness + 0.8 * s
        self._draw_disc(self.trace, tuple(middle), blob)
        return box

    def _spur(self) -> Optional[Box]:
        import cv2

        rng, s = self.rng, self.s
        site = self._trace_site(14 * s)
        if site is None:
            return None
        seg, point, direction, normal = site
        side = 1.0 if rng.random() < 0.5 else -1.0
        tilt = float(rng.uniform(-0.5, 0.5))
        axis = _unit(normal * side + direction * tilt)
        length = float(rng.uniform(11.0, 20.0)) * s
        base_half = float(rng.uniform(2.0, 3.2)) * s
        tip_half = float(rng.uniform(0.5, 0.9)) * s
        root = point + normal * side * (seg.width / 2.0 - 1.0)
        tip = root + axis * length
        # free board ahead of the spur: no copper, pads or silkscreen within the gap
        for t in np.linspace(3.0 * s, length + 4 * s, 10):
            probe = root + axis * t
            for lateral in (-3 * s, 0.0, 3 * s):
                q = probe + direction * lateral
                ix, iy = int(round(q[0])), int(round(q[1]))
                if not (0 <= ix < self.w and 0 <= iy < self.h):
                    return None
                if self.trace[iy, ix] or self.pad[iy, ix] or self.silk[iy, ix]:
                    return None
        side_dir = np.array([-axis[1], axis[0]])
        bend = side_dir * float(rng.uniform(-1.0, 1.0)) * s
        polygon = np.array(
            [
                root - side_dir * base_half,
                root + axis * length * 0.5 - side_dir * (base_half + tip_half) / 2 + bend,
                tip - side_dir * tip_half + bend,
                tip + side_dir * tip_half + bend,
                root + axis * length * 0.5 + side_dir * (base_half + tip_half) / 2 + bend,
                root + side_dir * base_half,
            ]
        )
        context = np.array([point - normal * side * (seg.width / 2.0)])
        corners = np.concatenate([polygon, context])
        x0, y0 = corners.min(axis=0) - 1.0 * s
        x1, y1 = corners.max(axis=0) + 1.0 * s
        box = self._finish_box(x0, y0, x1, y1)
        if box is None:
            return None
        cv2.fillPoly(self.trace, [_fixed_poly(polygon)], 255, _AA, _SHIFT)
        return box

    def _spurious_copper(self) -> Optional[Box]:
        import cv2

        rng, s = self.rng, self.s
        radius = float(rng.uniform(7.0, 13.0)) * s
        free = np.ascontiguousarray((self.keepout == 0) & (self.trace == 0) & (self.silk == 0)).astype(np.uint8)
        distance = cv2.distanceTransform(free, cv2.DIST_L2, 3)
        border = int(np.ceil(radius + 3 * s))
        distance[:border] = 0
        distance[-border:] = 0
        distance[:, :border] = 0
        distance[:, -border:] = 0
        ys, xs = np.nonzero(distance > radius + 1.0 * s)
        if len(xs) == 0:
            return None
        pick = int(rng.integers(0, len(xs)))
        centre = np.array([xs[pick], ys[pick]], np.float64) + rng.uniform(-0.5, 0.5, size=2)
        count = int(rng.integers(7, 12))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=count))
        radii = radius * rng.uniform(0.55, 1.0, size=count)
        stretch = float(rng.uniform(0.6, 1.0))
        rotation = float(rng.uniform(0, np.pi))
        local = np.stack([np.cos(angles) * radii, np.sin(angles) * radii * stretch], axis=1)
        rot = np.array([[np.cos(rotation), -np.sin(rotation)], [np.sin(rotation), np.cos(rotation)]])
        polygon = centre + local @ rot.T
        x0, y0 = polygon.min(axis=0) - 1.0 * s
        x1, y1 = polygon.max(axis=0) + 1.0 * s
        box = self._finish_box(x0, y0, x1, y1)
        if box is None:
            return None
        cv2.fillPoly(self.trace, [_fixed_poly(polygon)], 255, _AA, _SHIFT)
        self.keepout[int(y0) : int(np.ceil(y1)) + 1, int(x0) : int(np.ceil(x1)) + 1] = 255
        return box

    # ---------------------------------------------------------------- compositing

    def compose(self) -> np.ndarray:
        """The finished BGR uint8 image (H, W, 3)."""
        import cv2

        rng, s = self.rng, self.s
        for index, (x, y, _, hole_radius, _) in enumerate(self.pads):
            if index not in self.missing_holes:
                self._draw_disc(self.hole, (x, y), hole_radius)
        mask_colour = np.array([35, 100, 28], np.float32) + rng.uniform(-12, 12, size=3).astype(np.float32)
        mask_colour[0] += float(rng.uniform(-10, 25))  # some boards are bluer
        trace_colour = mask_colour * 0.55 + np.array([70, 200, 120], np.float32) * 0.6
        pad_colour = np.array([70, 175, 215], np.float32) + rng.uniform(-15, 15, size=3).astype(np.float32)
        if rng.random() < 0.35:  # tin (HASL) finish instead of gold
            pad_colour = np.array([185, 190, 190], np.float32) + rng.uniform(-15, 15, size=3).astype(np.float32)
        hole_colour = np.array([28, 30, 28], np.float32) + rng.uniform(-8, 8, size=3).astype(np.float32)
        silk_colour = np.array([228, 232, 230], np.float32) + rng.uniform(-15, 10, size=3).astype(np.float32)

        image = np.empty((self.h, self.w, 3), np.float32)
        image[:] = mask_colour
        # low-frequency mottling of the solder mask
        mottle = rng.uniform(0.93, 1.07, size=(6, 6)).astype(np.float32)
        image *= cv2.resize(mottle, (self.w, self.h), interpolation=cv2.INTER_CUBIC)[..., None]
        for layer, colour in ((self.trace, trace_colour), (self.pad, pad_colour), (self.silk, silk_colour)):
            alpha = layer.astype(np.float32)[..., None] * (1.0 / 255.0)
            image += alpha * (colour - image)
        alpha = self.hole.astype(np.float32)[..., None] * (1.0 / 255.0)
        image += alpha * (hole_colour - image)

        # lighting: a linear gradient in a random direction, plus a per-channel colour shift
        angle = float(rng.uniform(0, 2 * np.pi))
        strength = float(rng.uniform(0.0, 0.35))
        xs = (np.arange(self.w, dtype=np.float32) - self.w / 2.0) / max(self.w, self.h)
        ys = (np.arange(self.h, dtype=np.float32) - self.h / 2.0) / max(self.w, self.h)
        gradient = 1.0 + strength * (np.cos(angle) * xs[None, :] + np.sin(angle) * ys[:, None])
        brightness = float(rng.uniform(0.8, 1.15))
        gains = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
        image *= (gradient * brightness)[..., None] * gains
        sigma = float(rng.uniform(0.3, 1.0)) * s
        image = cv2.GaussianBlur(image, (0, 0), sigma)
        noise_sigma = float(rng.uniform(1.5, 6.0))
        image += rng.standard_normal(size=image.shape, dtype=np.float32) * noise_sigma
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _check_size(size: Sequence[int]) -> Tuple[int, int]:
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError("size must be (width, height), got {!r}".format(size)) from None
    if width < 64 or height < 64 or width > 4096 or height > 4096:
        raise DataError("size must be between 64x64 and 4096x4096 pixels, got {}x{}".format(width, height))
    return width, height


def render_board(
    rng: np.random.Generator, size: Sequence[int] = DEFAULT_SIZE, classes: Optional[Sequence[int]] = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one board with defects.

    rng: the generator that decides everything (same state -> same image).
    size: (width, height) in pixels.
    classes: class ids of the defects to draw (default: 1 to 4 distinct classes drawn at random).
    Returns (image (H, W, 3) uint8 BGR, boxes (N, 4) float32 xyxy pixels, class_ids (N,) int32).
    A defect that finds no room on this layout is left out, so N can be smaller than asked; with
    the default classes, a board where none of them fits gets one defect of another class instead.
    """
    width, height = _check_size(size)
    # layout, defects and photometry each get their own stream, so that the same board can be
    # drawn with and without a defect (everything else identical)
    layout_seed, defect_seed, photo_seed = (int(v) for v in rng.integers(0, 2**63 - 1, size=3, dtype=np.int64))
    chosen = classes is None
    if classes is None:
        count = int(rng.integers(1, 5))
        classes = [int(c) for c in rng.choice(len(CLASSES), size=count, replace=False)]
    board = _Board(np.random.default_rng(layout_seed), width, height)
    board.lay_out()
    board.rng = np.random.default_rng(defect_seed)
    board.add_defects(classes)
    if not board.boxes and chosen:  # none of the chosen classes fit this layout: take any that does
        others = [c for c in board.rng.permutation(len(CLASSES)).tolist() if c not in classes]
        board.add_defects(others, stop_after=1)
    board.rng = np.random.default_rng(photo_seed)
    image = board.compose()
    boxes = np.array(board.boxes, np.float32).reshape(-1, 4)
    return image, boxes, np.array(board.class_ids, np.int32)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image `index` of dataset `seed` (independent of every other image)."""
    return np.random.default_rng([GENERATOR_VERSION, int(seed), int(index)])


def _render_file(job: Tuple[int, int, Tuple[int, int], str]) -> Tuple[int, List[List[float]], List[int]]:
    """Render image `index` and write it atomically; returns (index, boxes xyxy, class ids)."""
    import cv2

    seed, index, size, path = job
    image, boxes, class_ids = render_board(image_rng(seed, index), size)
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise DataError("could not encode image {}".format(path))
    atomic_write_bytes(path, encoded.tobytes())
    return index, boxes.tolist(), class_ids.tolist()


def image_file_name(index: int) -> str:
    return "{:06d}.png".format(index)


def _coco_document(
    seed: int, size: Tuple[int, int], indices: Sequence[int], results: Dict[int, Tuple[List[List[float]], List[int]]]
) -> dict:
    images, annotations = [], []
    for index in indices:
        boxes, class_ids = results[index]
        image_id = index + 1
        images.append({"id": image_id, "file_name": image_file_name(index), "width": size[0], "height": size[1]})
        for (x1, y1, x2, y2), class_id in zip(boxes, class_ids):
            w, h = round(x2 - x1, 2), round(y2 - y1, 2)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "bbox": [round(x1, 2), round(y1, 2), w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": "edge-sdk procedural PCB defects",
            "generator_version": GENERATOR_VERSION,
            "seed": seed,
        },
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "defect"} for i, name in enumerate(CLASSES)],
    }


def synthesize(
    out_dir: Union[str, Path],
    images: int,
    seed: int,
    size: Sequence[int] = DEFAULT_SIZE,
    val_fraction: float = 0.2,
    progress: Union[bool, Callable[[int, int], None]] = True,
    workers: Optional[int] = None,
) -> Tuple[Path, Path]:
    """Write the procedural PCB-defect dataset as COCO and return (train_json, val_json).

    out_dir/images/NNNNNN.png are written first (each atomically), then val.json and train.json,
    so a run that stops half-way leaves no JSON that looks complete. The last
    round(images * val_fraction) images (at least one when val_fraction > 0) form the val split.
    progress: True for a rich progress bar, False for none, or a callable(done, total).
    workers: processes to render with (default: 1 for small runs, else up to the CPU count).
    """
    width, height = _check_size(size)
    if int(images) != images or images < 1:
        raise DataError("images must be a positive whole number, got {!r}".format(images))
    if int(seed) != seed or seed < 0:
        raise DataError("seed must be a non-negative whole number, got {!r}".format(seed))
    if not 0.0 <= val_fraction < 1.0:
        raise DataError("val_fraction must be in [0, 1), got {!r}".format(val_fraction))
    images, seed = int(images), int(seed)
    val_count = 0
    if val_fraction > 0:
        if images < 2:
            raise DataError("need at least 2 images to make a val split (or pass val_fraction=0)")
        val_count = min(images - 1, max(1, int(round(images * val_fraction))))
    out = Path(out_dir)
    image_dir = out / "images"
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError("cannot create {}: {}".format(image_dir, exc.strerror or exc)) from None
    train_json, val_json = out / "train.json", out / "val.json"
    for stale in (train_json, val_json):
        if stale.exists():
            stale.unlink()

    jobs = [(seed, i, (width, height), str(image_dir / image_file_name(i))) for i in range(images)]
    if workers is None:
        workers = 1 if images * width * height < 100 * 256 * 256 else min(4, os.cpu_count() or 1)
    results: Dict[int, Tuple[List[List[float]], List[int]]] = {}
    label = "synthesizing {} images".format(images)
    if workers <= 1:
        with progress_bar(label, images, progress) as report:
            for index, boxes, class_ids in map(_render_file, jobs):
                results[index] = (boxes, class_ids)
                report()
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            pool.submit(int).result()  # start the workers before the progress bar starts its thread
            with progress_bar(label, images, progress) as report:
                for index, boxes, class_ids in pool.map(_render_file, jobs, chunksize=4):
                    results[index] = (boxes, class_ids)
                    report()

    split = images - val_count
    for path, indices in ((val_json, range(split, images)), (train_json, range(split))):
        document = _coco_document(seed, (width, height), list(indices), results)
        atomic_write_bytes(path, json.dumps(document, separators=(",", ":")).encode("utf-8"))
    return train_json, val_json
