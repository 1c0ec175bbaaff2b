"""INT8 calibration: calibration sets, PTQ, TensorRT scales and the accuracy guard.

PaddleSlim is imported only inside host-only functions: the robot image has none.
"""

import edge_sdk  # noqa: F401  (imports zlib before paddle; see edge_sdk/__init__.py)
