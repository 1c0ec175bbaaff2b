"""The recipe's `int8` section: how the calibration set is chosen, how PTQ runs and the accuracy budget.

A frozen dataclass whose field constraints (`edge_sdk.schema.checked`) are what the recipe's
validator reads, so `Recipe` can hold it as a field without a second validator.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_sdk.schema import checked

PTQ_ALGOS = ("KL", "hist", "avg", "mse", "abs_max")


@dataclass(frozen=True)
class Int8Section:
    """INT8 calibration.

    calibration_images: how many images `select_calibration_set` picks from the training set;
    seed, brightness_bins, size_bins: its selection. algo: PTQ algorithm. batch_size: calibration
    batch. budget_map50: the most mAP@.5 (in points, 1.0 = 0.01 mAP) INT8 may lose against FP32 on
    the val set. max_retries: attempts after the first, each keeping `layers_per_retry` more of the
    most sensitive layers in float. sensitivity_images: val images the per-layer sensitivity is
    measured on. fallback: what to do when PTQ stays over budget: "fail" or "qat" (see compress.qat).
    """

    calibration_images: int = checked(64, minimum=1)
    seed: int = checked(0, minimum=0)
    brightness_bins: int = checked(4, minimum=1)
    size_bins: int = checked(4, minimum=1)
    algo: str = checked("KL", choices=PTQ_ALGOS)
    batch_size: int = checked(8, minimum=1)
    budget_map50: float = checked(1.0, minimum=0.0, maximum=100.0)
    max_retries: int = checked(3, minimum=0)
    layers_per_retry: int = checked(2, minimum=1)
    sensitivity_images: int = checked(16, minimum=1)
    fallback: str = checked("fail", choices=("fail", "qat"))
