# edge-sdk runtime image for NVIDIA Jetson AGX Xavier on JetPack 5.1 (L4T r35, Python 3.8).
#
# Build on the robot (or an arm64 builder) with the Paddle Inference wheel for JetPack 5.1, which is
# not on PyPI (TensorRT 8.5, CUDA 11.4, sm_72):
#   docker build -f jetson.Dockerfile \
#     --build-arg PADDLE_WHEEL_URL=https://.../paddlepaddle_gpu-2.6.2-cp38-cp38-linux_aarch64.whl \
#     -t edge-sdk:jetson .
# Run (the engine cache survives restarts on the named volume; devices are passed explicitly; the
# host's dialout group id may differ from the image's, so it is added by number):
#   docker run --runtime nvidia --restart always --group-add "$(getent group dialout | cut -d: -f3)" \
#     --device /dev/video0 --device /dev/ttyTHS0 \
#     -v edge-engines:/var/cache/edge-sdk/engines -v /var/lib/edge-sdk:/var/lib/edge-sdk \
#     -p 8080:8080 edge-sdk:jetson --camera 0 --serial /dev/ttyTHS0 --preview 0.0.0.0:8080
ARG L4T_BASE=nvcr.io/nvidia/l4t-jetpack:r35.4.1
FROM ${L4T_BASE}

ARG PADDLE_WHEEL_URL
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3-pip for the wheels; v4l-utils and the GStreamer plugins for cameras (CSI via
# nvarguscamerasrc, USB via v4l2src, RTSP). OpenCV is JetPack's own, built with GStreamer:
# never pip-install opencv here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3-pip v4l-utils \
        gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav \
    && rm -rf /var/lib/apt/lists/*

# The wheel is pinned by its URL (DL3013 cannot see that).
# hadolint ignore=DL3013
RUN test -n "${PADDLE_WHEEL_URL}" || { echo "pass --build-arg PADDLE_WHEEL_URL=<Paddle Inference 2.6 JetPack 5.1 wheel>"; exit 1; } \
    && python3 -m pip install --no-cache-dir "${PADDLE_WHEEL_URL}" \
    && python3 -c "import cv2, re, sys; sys.exit(0 if re.search(r'GStreamer:\s+YES', cv2.getBuildInformation()) else 'JetPack OpenCV without GStreamer')"

# Only the robot's packages: the workstation's compress/ (and paddleslim) never ship.
WORKDIR /opt/edge-sdk
COPY pyproject.toml README.md ./
COPY edge_sdk ./edge_sdk
COPY device ./device
COPY calibration ./calibration
COPY edge_cli ./edge_cli
# Our own package from this folder; its dependencies are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir ".[runtime,monitoring]" \
    && python3 -c "import sys; sys.modules['paddleslim'] = None; import device, calibration, edge_cli" \
    && edge-sdk --version

# A fixed uid so host folders mounted as volumes can be given to it (chown 1000).
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin --groups video,dialout edge \
    && mkdir -p /var/cache/edge-sdk/engines /var/lib/edge-sdk \
    && chown -R edge:edge /var/cache/edge-sdk /var/lib/edge-sdk
ENV EDGE_SDK_ENGINE_CACHE=/var/cache/edge-sdk/engines \
    PYTHONUNBUFFERED=1
VOLUME ["/var/cache/edge-sdk/engines"]

USER 1000
EXPOSE 8080
ENTRYPOINT ["edge-sdk", "run"]
CMD ["--camera", "0"]
