"""Workstation-only: YOLOv3 models, training, pruning, distillation, QAT and export."""

import edge_sdk  # noqa: F401  (imports zlib before paddle; see edge_sdk/__init__.py)
