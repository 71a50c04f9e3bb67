# syntax=docker/dockerfile:1
# The model builder: CPU torch + the [model] extra, running `ca-serve build-repo`.
#
#   # the tool itself: `docker run ... ca-serve-builder:0.1.0 build-repo --output /out ...`
#   docker build -f deploy/docker/builder.Dockerfile --target builder -t ca-serve-builder:0.1.0 .
#   # the model image the Kubernetes init containers copy the repository from
#   docker build -f deploy/docker/builder.Dockerfile --build-arg WEIGHTS=default \
#       -t ca-serve-model:0.1.0 .
#
# WEIGHTS is what `build-repo --weights` takes: `default` (the authors' release), a URL,
# or `random` (loudly marked as such in the repository). The export is verified against
# eager PyTorch while the image builds, so a bad checkpoint fails the build, not a pod.
# CA_SERVE_VERSION defaults to deploy/versions.env (a test checks it); the images' tag.
ARG PYTHON_VERSION=3.11
ARG CA_SERVE_VERSION=0.1.0

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
ARG CA_SERVE_VERSION
LABEL org.opencontainers.image.title="ca-serve-builder" \
      org.opencontainers.image.version="${CA_SERVE_VERSION}"
# The Makefile's pin. The CPU index: PyPI's default Linux wheel is the multi-GB CUDA build.
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
COPY model_repository ./model_repository
COPY deploy/docker/constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt ".[model]" && rm /tmp/constraints.txt
RUN groupadd --system --gid 10001 ca-serve \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/ca-serve ca-serve
USER 10001:10001
ENTRYPOINT ["ca-serve"]
CMD ["build-repo", "--help"]

FROM builder AS export
ARG WEIGHTS=default
USER root
# `default` falls back to random weights when the release cannot be fetched: fine on a
# laptop, never in an image, so the build fails unless random weights were asked for.
RUN ca-serve build-repo --weights "${WEIGHTS}" --target gpu \
        --output /opt/ca-serve/model_repository \
    && test -f /opt/ca-serve/model_repository/ca_mobilenetv2_onnx/1/model.onnx \
    && WEIGHTS="${WEIGHTS}" python -c "import os, sys; from pathlib import Path; from service.spec import WeightsInfo; info = WeightsInfo.load(Path('/opt/ca-serve/model_repository/ca_mobilenetv2_onnx/1')); sys.exit(0 if os.environ['WEIGHTS'] == 'random' or (info is not None and not info.random_init) else 'random-init weights in the model image: pass WEIGHTS=<path or URL>, or WEIGHTS=random on purpose')"

# The model image: only the repository and a shell to copy it, for init containers
# (`cp -R /opt/ca-serve/model_repository/. /models/`).
FROM busybox:1.37 AS model
ARG CA_SERVE_VERSION
LABEL org.opencontainers.image.title="ca-serve-model" \
      org.opencontainers.image.version="${CA_SERVE_VERSION}"
# The mount point, writable by whichever uid copies into it (docker compose initialises
# its named volume from this directory; Kubernetes mounts an emptyDir over it).
RUN mkdir -m 0777 /models
COPY --from=export --chown=10001:10001 /opt/ca-serve/model_repository /opt/ca-serve/model_repository
USER 10001:10001
CMD ["cp", "-R", "/opt/ca-serve/model_repository/.", "/models/"]
