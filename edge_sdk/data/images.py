"""Reading a dataset's image files."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from edge_sdk.errors import DataError


def read_bgr(path: Union[str, Path], what: str = "image") -> np.ndarray:
    """The image file at `path` as (H, W, 3) uint8 BGR; DataError "cannot decode {what} {path}" otherwise."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError("cannot decode {} {}".format(what, path))
    return image
