# syntax=docker/dockerfile:1
# The TensorRT init step's image: the pinned NGC Triton image itself, plus TensorRT's Python
# bindings for the TensorRT already in it and the ca-serve package, so
#   python3 -m service.model.tensorrt --repository /models --cache /cache
# builds plans with the very libnvinfer that Triton's TensorRT backend loads them with. The
# server runs the stock image of the same tag (k8s/triton/statefulset.yaml).
#
#   docker build -f deploy/docker/triton.Dockerfile -t ca-serve-triton:25.06-0.1.0 .
#
# The build args default to deploy/versions.env (a test checks they agree); pass all three
# from it to move the stack. What the NGC image is expected to hold, from Triton's build.py
# and its TensorRT backend's CMakeLists (not seen in a pulled image): python3 and pip (the
# Python backend's), numpy<2, CUDA_VERSION in the environment, TensorRT's libraries on the
# loader path, linked by /opt/tritonserver/backends/tensorrt/libtriton_tensorrt.so, and no
# TensorRT Python package. trtexec is not relied on. Each step below checks what it assumes
# and stops the build with a message where the image differs.
ARG TRITON_RELEASE=25.06
FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3
ARG TRITON_RELEASE
ARG TENSORRT_VERSION=10.11.0.33
ARG CA_SERVE_VERSION=0.1.0
LABEL org.opencontainers.image.title="ca-serve-triton" \
      org.opencontainers.image.version="${TRITON_RELEASE}-${CA_SERVE_VERSION}" \
      org.opencontainers.image.base.name="nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3"
# TENSORRT_VERSION stays in the environment: the init step fails unless it builds with it.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TENSORRT_VERSION=${TENSORRT_VERSION}
# 1. The libnvinfer Triton's TensorRT backend links is the pinned TensorRT.
RUN set -eu; \
    backend=/opt/tritonserver/backends/tensorrt/libtriton_tensorrt.so; \
    test -f "${backend}" || { echo "no TensorRT backend at ${backend}" >&2; exit 1; }; \
    linked="$(ldd "${backend}" | awk '$1 ~ /^libnvinfer\.so\.[0-9]+$/ && $3 ~ /^\// {print $3}')"; \
    test -n "${linked}" || { echo "ldd finds no libnvinfer for ${backend}" >&2; exit 1; }; \
    lib="$(readlink -f "${linked}")"; \
    found="${lib##*/libnvinfer.so.}"; \
    want="$(echo "${TENSORRT_VERSION}" | cut -d. -f1-3)"; \
    if [ "${found}" != "${want}" ]; then \
        echo "Triton ${TRITON_RELEASE} links TensorRT ${found} (${lib}); TENSORRT_VERSION is ${TENSORRT_VERSION}" >&2; \
        exit 1; \
    fi; \
    echo "Triton's TensorRT backend links ${lib}"; \
    echo "trtexec: $(command -v trtexec || ls /usr/src/tensorrt/bin/trtexec 2>/dev/null || echo none)"
# 2. TensorRT's Python bindings alone, at exactly that version, for this image's CUDA major.
# The bindings wheel carries no libraries and loads the image's libnvinfer; the `tensorrt-cuXX`
# metapackage would add `tensorrt-cuXX-libs`, a second TensorRT that plans could be built by.
RUN set -eu; \
    cuda_major="${CUDA_VERSION%%.*}"; \
    test -n "${cuda_major}" || { echo "CUDA_VERSION is not set in the base image" >&2; exit 1; }; \
    python3 -m pip install --no-deps --extra-index-url https://pypi.nvidia.com \
        "tensorrt-cu${cuda_major}-bindings==${TENSORRT_VERSION}"; \
    if python3 -c "import tensorrt_libs" 2>/dev/null; then \
        echo "a pip TensorRT library wheel is installed; it would shadow the image's" >&2; exit 1; \
    fi; \
    module="$(python3 -c 'import importlib.util, pathlib; origin = importlib.util.find_spec("tensorrt_bindings").origin; print(next(pathlib.Path(origin).parent.glob("tensorrt*.so")))')"; \
    bound="$(ldd "${module}" | awk '$1 ~ /^libnvinfer\.so\.[0-9]+$/ && $3 ~ /^\// {print $3}')"; \
    server="$(ldd /opt/tritonserver/backends/tensorrt/libtriton_tensorrt.so | awk '$1 ~ /^libnvinfer\.so\.[0-9]+$/ {print $3}')"; \
    if [ -z "${bound}" ] || [ "$(readlink -f "${bound}")" != "$(readlink -f "${server}")" ]; then \
        echo "the bindings load libnvinfer from '${bound}', Triton from '${server}'" >&2; exit 1; \
    fi
# 3. What the step imports besides TensorRT (numpy and Pillow for the probe photos, ONNX
# Runtime CPU for the reference), at the pinned versions.
COPY deploy/docker/constraints.txt /tmp/constraints.txt
RUN python3 -m pip install -c /tmp/constraints.txt numpy pillow onnxruntime \
    && rm /tmp/constraints.txt
# 4. The ca-serve package itself, without the gateway's server dependencies.
WORKDIR /opt/ca-serve/src
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
RUN python3 -m pip install --no-deps . && rm -rf /opt/ca-serve/src/build \
    && cd / && python3 -c "import service.model.tensorrt; from service.verification import verification_images as v; assert v(), 'no probe photos installed'"
WORKDIR /
# The plan cache's mount point, owned by the user the step runs as.
RUN mkdir -p /cache && chown 1000:1000 /cache
# The NGC image's triton-server user.
USER 1000:1000
CMD ["python3", "-m", "service.model.tensorrt", "--repository", "/models", "--cache", "/cache"]
