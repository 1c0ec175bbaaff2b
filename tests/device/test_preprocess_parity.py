"""Detections identical to PaddleDetection's deploy code on a PaddleDetection export.

The export (program + infer_cfg.yml) is run (a) by this SDK: `edge-sdk bundle import-ppdet`, then
`Detector`, and (b) the way PaddleDetection's deploy/python/infer.py runs it: the image decoded
and converted to RGB, `Resize` / `NormalizeImage` / `Permute` from deploy/python/preprocess.py as
listed in infer_cfg.yml, fed to a plain `paddle.inference` predictor configured like infer.py's
`--device CPU --enable_mkldnn True --cpu_threads 1`. The boxes must agree bit for bit.
"""

from __future__ import annotations

import cv2
import numpy as np
import yaml

from device.detector import Detector
from device.ppdet import import_ppdet
from edge_sdk.data.synth import render_board
from tests.device.test_ppdet import INFER_CFG, ppdet_export  # noqa: F401  (the export fixture)


def ppdet_decode(path):
    """deploy/python/preprocess.py decode_image: the file's bytes, cv2.imdecode, BGR -> RGB."""
    with open(str(path), "rb") as handle:
        data = np.frombuffer(handle.read(), dtype="uint8")
    image = cv2.cvtColor(cv2.imdecode(data, 1), cv2.COLOR_BGR2RGB)
    return image, {"im_shape": np.array(image.shape[:2], dtype=np.float32), "scale_factor": np.array([1.0, 1.0])}


def ppdet_resize(image, info, target_size, keep_ratio, interp):
    """deploy/python/preprocess.py Resize (keep_ratio false)."""
    assert not keep_ratio
    origin = image.shape[:2]
    scale_y, scale_x = target_size[0] / float(origin[0]), target_size[1] / float(origin[1])
    image = cv2.resize(image, None, None, fx=scale_x, fy=scale_y, interpolation=interp)
    info["im_shape"] = np.array(image.shape[:2]).astype("float32")
    info["scale_factor"] = np.array([scale_y, scale_x]).astype("float32")
    return image, info


def ppdet_normalize(image, info, mean, std, is_scale=True, norm_type="mean_std"):
    """deploy/python/preprocess.py NormalizeImage."""
    image = image.astype(np.float32, copy=False)
    if is_scale:
        image *= 1.0 / 255.0
    if norm_type == "mean_std":
        image -= np.array(mean)[np.newaxis, np.newaxis, :]
        image /= np.array(std)[np.newaxis, np.newaxis, :]
    return image, info


def ppdet_permute(image, info):
    """deploy/python/preprocess.py Permute."""
    return image.transpose((2, 0, 1)).copy(), info


OPS = {"Resize": ppdet_resize, "NormalizeImage": ppdet_normalize, "Permute": ppdet_permute}


def ppdet_boxes(export_dir, image_path):
    """infer.py: preprocess as infer_cfg.yml lists, create_inputs, a plain predictor; boxes [M, 6]."""
    from paddle import inference

    cfg = yaml.safe_load((export_dir / "infer_cfg.yml").read_text())
    image, info = ppdet_decode(image_path)
    for op in cfg["Preprocess"]:
        arguments = {key: value for key, value in op.items() if key != "type"}
        image, info = OPS[op["type"]](image, info, **arguments)
    inputs = {
        "image": np.stack([image], axis=0),
        "im_shape": np.stack([info["im_shape"]], axis=0),
        "scale_factor": np.stack([info["scale_factor"]], axis=0),
    }
    config = inference.Config(str(export_dir / "model.pdmodel"), str(export_dir / "model.pdiparams"))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(1)
    config.set_mkldnn_cache_capacity(10)
    config.enable_mkldnn()
    config.disable_glog_info()
    config.enable_memory_optim()
    config.switch_use_feed_fetch_ops(False)
    predictor = inference.create_predictor(config)
    for name in predictor.get_input_names():
        handle = predictor.get_input_handle(name)
        handle.reshape(inputs[name].shape)
        handle.copy_from_cpu(inputs[name])
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def test_boxes_match_paddledetection_deploy_bit_for_bit(ppdet_export, tmp_path):  # noqa: F811
    bundle = import_ppdet(ppdet_export, tmp_path / "pcb.edgebundle")
    with Detector(bundle, threads=1, device="cpu") as detector:
        for size, suffix in (((120, 160), ".png"), ((480, 640), ".jpg"), ((97, 203), ".png")):
            image_path = tmp_path / "board{}x{}{}".format(size[1], size[0], suffix)
            board = render_board(np.random.default_rng(sum(size)), (size[1], size[0]))[0]
            noise = np.random.default_rng(3).integers(0, 40, board.shape, dtype=np.uint8)  # more uint8 levels
            cv2.imwrite(str(image_path), cv2.add(board, noise))
            want = ppdet_boxes(ppdet_export, image_path)
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            got = detector.infer(detector.preprocess(image))
            assert want.shape[0] > 0 and len(detector.detect(image, score_threshold=0.0)) > 0
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), image_path.name
