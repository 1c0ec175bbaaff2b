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


class Preprocessor:
    """BGR uint8 image (H, W, 3) -> {"image": [1,3,h,w] float32, "im_shape": [1,2], "scale_factor": [1,2]}.

    (h, w) is the manifest's input size. stretch (PaddleDetection's Resize with keep_ratio false):
    im_shape = (h, w), scale_factor = (h / H, w / W). keep_ratio: one scale s = min(h/H, w/W), the
    resized image padded with zeros at the bottom/right after normalisation, im_shape = (h, w) and
    scale_factor = (s, s), so the exported decoder still maps network pixels to source pixels.
    Normalisation: channel order as the manifest says, x/255 when `scale`, then (x - mean) / std.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.height, self.width = (int(v) for v in spec.size)
        mean = np.asarray(spec.mean, np.float32).reshape(1, 1, 3)
        std = np.asarray(spec.std, np.float32).reshape(1, 1, 3)
        # ((x / 255) - mean) / std folded into one multiply-add: x * gain + offset.
        self.gain = (np.float32(1.0 / 255.0) if spec.scale else np.float32(1.0)) / std
        self.offset = -mean / std
        self.interpolation = _cv2_interpolation(spec.interpolation)

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
        if self.spec.channel_order == "RGB":
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        pixels = np.multiply(resized, self.gain, dtype=np.float32)
        pixels += self.offset
        if (new_h, new_w) != (self.height, self.width):
            padded = np.zeros((self.height, self.width, 3), np.float32)
            padded[:new_h, :new_w] = pixels
            pixels = padded
        return {
            "image": np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis]),
            "im_shape": np.array([[self.height, self.width]], np.float32),
            "scale_factor": np.array([scale_factor], np.float32),
        }
