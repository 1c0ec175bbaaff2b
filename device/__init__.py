"""Robot runtime: predictor, sources, pipeline, sinks, install and rollback, telemetry."""

import edge_sdk  # noqa: F401  (imports zlib before paddle; see edge_sdk/__init__.py)
