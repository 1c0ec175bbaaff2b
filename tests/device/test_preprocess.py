"""device.preprocess: manifest preprocessing matches PaddleDetection's, stretch and keep_ratio."""

from __future__ import annotations

import cv2
import numpy as np

from device.preprocess import Preprocessor
from edge_sdk.manifest import InputSpec

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_stretch_preprocessing_matches_paddledetection_by_hand():
    image = noise_image(48, 80)
    out = Preprocessor(InputSpec(size=(32, 64)))(image)
    # PaddleDetection: Decode (BGR -> RGB), Resize(keep_ratio=False, interp=2) with fx/fy,
    # NormalizeImage(is_scale=True, ImageNet mean/std), Permute, batch of one.
    rgb = image[:, :, ::-1]
    resized = cv2.resize(rgb, None, None, fx=64 / 80, fy=32 / 48, interpolation=cv2.INTER_CUBIC)
    expected = resized.astype(np.float32)
    expected *= 1.0 / 255.0
    expected -= np.array(MEAN)[np.newaxis, np.newaxis, :]  # float64 mean and std, as NormalizeImage does
    expected /= np.array(STD)[np.newaxis, np.newaxis, :]
    assert out["image"].shape == (1, 3, 32, 64) and out["image"].dtype == np.float32
    np.testing.assert_array_equal(out["image"][0], expected.transpose(2, 0, 1))  # bit for bit
    np.testing.assert_array_equal(out["im_shape"], np.array([[32, 64]], np.float32))
    np.testing.assert_allclose(out["scale_factor"], np.array([[32 / 48, 64 / 80]], np.float32))


def test_bgr_unscaled_nearest_preprocessing():
    image = noise_image(20, 20, seed=1)
    spec = InputSpec(
        size=(10, 10),
        interpolation="nearest",
        mean=(1.0, 2.0, 3.0),
        std=(2.0, 2.0, 2.0),
        channel_order="BGR",
        scale=False,
    )
    out = Preprocessor(spec)(image)
    resized = cv2.resize(image, (10, 10), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    expected = ((resized - np.array([1.0, 2.0, 3.0], np.float32)) / 2.0).transpose(2, 0, 1)
    np.testing.assert_allclose(out["image"][0], expected, rtol=1e-6)


def test_keep_ratio_pads_and_uses_one_scale():
    image = noise_image(50, 100, seed=2)
    out = Preprocessor(InputSpec(size=(64, 64), resize_mode="keep_ratio"))(image)
    assert out["image"].shape == (1, 3, 64, 64)
    np.testing.assert_allclose(out["scale_factor"], [[0.64, 0.64]])
    np.testing.assert_array_equal(out["im_shape"], [[64, 64]])
    assert np.all(out["image"][0, :, 32:, :] == 0)  # 50 * 0.64 = 32 rows of image, then padding
    assert np.any(out["image"][0, :, :32, :] != 0)
