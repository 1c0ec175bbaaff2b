"""Manifest preprocessing: a BGR image -> the three inputs of a PaddleDetection-style YOLOv3 export."""

from __future__ import annotations

from typing import Dict

import numpy as np

from edge_sdk.manifest import InputSpec


def _cv2_interpolation(name: str) -> int:
    import cv2

    return {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}[
        name
    ]


def normalisation_table(spec: InputSpec) -> np.ndarray:
    """(3, 256) float32: entry [c, v] is what PaddleDetection's NormalizeImage makes of the uint8
    value v in network channel c, computed with its own arithmetic (float32 x * (1/255), then
    - mean and / std in float64 rounded back to float32), so a table lookup is bit-identical to it."""
    values = np.repeat(np.arange(256, dtype=np.float32).reshape(256, 1, 1), 3, axis=2)
    if spec.scale:
        values *= 1.0 / 255.0
    values -= np.asarray(spec.mean, np.float64)[np.newaxis, np.newaxis, :]
    values /= np.asarray(spec.std, np.float64)[np.newaxis, np.newaxis, :]
    return np.ascontiguousarray(values[:, 0, :].T)


class Preprocessor:
    """BGR uint8 image (H, W, 3) -> {"image": [1,3,h,w] float32, "im_shape": [1,2], "scale_factor": [1,2]}.

    (h, w) is the manifest's input size. stretch (PaddleDetection's Resize with keep_ratio false):
    im_shape = (h, w), scale_factor = (h / H, w / W). keep_ratio: one scale s = min(h/H, w/W), the
    resized image padded with zeros at the bottom/right after normalisation, im_shape = (h, w) and
    scale_factor = (s, s), so the exported decoder still maps network pixels to source pixels.
    Normalisation: channel order as the manifest says, x/255 when `scale`, then (x - mean) / std,
    bit-identical to PaddleDetection's deploy/python/preprocess.py. One pass after the resize: each
    uint8 plane is looked up in `normalisation_table` straight into its plane of the output (the
    channel swap and the HWC -> CHW permute cost nothing).
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.height, self.width = (int(v) for v in spec.size)
        self.table = normalisation_table(spec)
        # Network channel c is read from BGR plane source_planes[c].
        self.source_planes = (2, 1, 0) if spec.channel_order == "RGB" else (0, 1, 2)
        self.interpolation = _cv2_interpolation(spec.interpolation)
        self.im_shape = np.array([[self.height, self.width]], np.float32)

    def __call__(self, image_bgr: np.ndarray) -> Dict[str, np.ndarray]:
        import cv2

        src_h, src_w = image_bgr.shape[:2]
        if self.spec.resize_mode == "keep_ratio":
            scale = min(self.height / src_h, self.width / src_w)
            new_h = max(1, min(self.height, int(round(src_h * scale))))
            new_w = max(1, min(self.width, int(round(src_w * scale))))
            scale_factor = (scale, scale)
        else:
            new_h, new_w = self.height, self.width
            scale_factor = (self.height / src_h, self.width / src_w)
        resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=self.interpolation)
        planes = cv2.split(resized)
        padded = (new_h, new_w) != (self.height, self.width)
        pixels = (np.zeros if padded else np.empty)((1, 3, self.height, self.width), np.float32)
        for channel, plane in enumerate(self.source_planes):
            if padded:
                pixels[0, channel, :new_h, :new_w] = cv2.LUT(planes[plane], self.table[channel])
            else:
                cv2.LUT(planes[plane], self.table[channel], dst=pixels[0, channel])
        return {
            "image": pixels,
            "im_shape": self.im_shape.copy(),
            "scale_factor": np.array([scale_factor], np.float32),
        }
