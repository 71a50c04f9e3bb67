# syntax=docker/dockerfile:1
# The image of the TensorRT init step: the pinned NGC Triton image plus TensorRT's Python
# API at the same TensorRT version and the ca-serve package, so
#   python3 -m service.model.tensorrt --repository /models --cache /cache
# builds a plan this very Triton version loads. The server itself runs the stock image
# (k8s/triton/statefulset.yaml); keep TRITON_TAG and that image's tag the same.
#
#   docker build -f deploy/docker/triton.Dockerfile -t ca-serve-triton:25.06-0.1.0 .
#
# TENSORRT_VERSION is the TensorRT in that Triton release (NVIDIA's Frameworks Support
# Matrix); the build stops if it does not match the libnvinfer in the image.
ARG TRITON_TAG=25.06-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}
ARG TENSORRT_VERSION=10.11.0.33
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Checked before pip brings its own copy of the library.
RUN set -eu; \
    lib="$(find /usr/lib /usr/local /opt -name 'libnvinfer.so.*.*.*' 2>/dev/null | head -n 1)"; \
    if [ -z "${lib}" ]; then echo "no libnvinfer in the Triton image" >&2; exit 1; fi; \
    server="${lib##*libnvinfer.so.}"; \
    case "${TENSORRT_VERSION}" in \
        "${server}"*) echo "TensorRT ${TENSORRT_VERSION} matches the server's ${server}" ;; \
        *) echo "TensorRT mismatch: pip ${TENSORRT_VERSION}, server libnvinfer ${server:-none}" >&2; exit 1 ;; \
    esac
# What service.model.tensorrt imports: tensorrt alone (no torch: the GPU's name and compute
# capability for the plan cache key come from nvidia-smi, which the node's driver provides).
RUN python3 -m pip install "tensorrt-cu12==${TENSORRT_VERSION}"
WORKDIR /opt/ca-serve/src
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
# Only the package: none of the gateway's server dependencies.
RUN python3 -m pip install --no-deps . && rm -rf /opt/ca-serve/src/build
WORKDIR /
# The plan cache's mount point, owned by the user the step runs as.
RUN mkdir -p /cache && chown 1000:1000 /cache
# The NGC image's triton-server user.
USER 1000:1000
CMD ["python3", "-m", "service.model.tensorrt", "--repository", "/models", "--cache", "/cache"]
