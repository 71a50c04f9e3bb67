# syntax=docker/dockerfile:1
# The gateway: FastAPI + OpenVINO (the embedded backend's engine on x86-64 and arm64) +
# ONNX Runtime + tritonclient on python-slim. No torch: the project's base dependencies
# never pull it (torch lives under the [model] extra).
#   docker build -f deploy/docker/gateway.Dockerfile -t ca-serve-gateway:0.1.0 .
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY clients ./clients
COPY deploy/docker/constraints.txt /tmp/constraints.txt
# Base install and the [tracing] extra (OpenTelemetry, off unless OTEL_TRACES_EXPORTER is
# set), at the versions the test suite runs with; the build fails if anything dragged torch
# in anyway, or if OpenVINO is missing where its wheels exist (the gateway would fall back
# to ONNX Runtime).
RUN pip install -c /tmp/constraints.txt ".[tracing]" \
    && if pip show torch >/dev/null 2>&1; then echo "torch leaked into the gateway" >&2; exit 1; fi \
    && case "$(uname -m)" in x86_64|aarch64) python -c "import openvino" ;; esac

FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CA_HOST=0.0.0.0 \
    CA_PORT=8000 \
    CA_MODEL_REPOSITORY=/models
RUN groupadd --system --gid 10001 ca-serve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin ca-serve
COPY --from=build /opt/venv /opt/venv
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# SIGTERM goes straight to the server (exec form, PID 1): it stops accepting, drains, exits.
ENTRYPOINT ["ca-serve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
