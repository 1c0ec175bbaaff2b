"""edge-sdk: take a YOLOv3 detector from a workstation to Jetson AGX Xavier robots."""

# zlib must be imported before paddle: libpaddle (2.6) exports its own zlib symbols and a later
# zlib.decompress then segfaults. Every entry point imports edge_sdk first, so this is the one place.
import zlib  # noqa: F401

__version__ = "0.1.0"
