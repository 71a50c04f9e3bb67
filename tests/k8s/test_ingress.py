"""The Ingress lets through what the gateway accepts and nothing it keeps internal: the
upload limit and timeouts cover the gateway's, it routes to the gateway Service's port, it
exposes the API and the page only (checked against the real app's routes), and nginx's
timeouts fit the gateway's connection deadlines."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import pytest

from service.gateway.settings import Settings
from tests.k8s.manifests import GATEWAY, Manifest, gateway_config, nginx_size_bytes, one


def test_ingress_body_limit_covers_the_gateway_upload_limit(
    objects: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    ingress = one(objects, "Ingress", GATEWAY)
    annotations = ingress["metadata"]["annotations"]
    body_limit = nginx_size_bytes(annotations["nginx.ingress.kubernetes.io/proxy-body-size"])
    config = gateway_config(objects)
    monkeypatch.delenv("CA_MAX_UPLOAD_BYTES", raising=False)
    assert body_limit >= Settings().max_upload_bytes
    assert body_limit >= int(config["CA_MAX_UPLOAD_BYTES"])
    timeout = float(config["CA_REQUEST_TIMEOUT_S"])
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > timeout
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) > timeout


def test_ingress_routes_to_the_gateway_service_port(objects: list[Manifest]) -> None:
    ingress = one(objects, "Ingress", GATEWAY)
    service = one(objects, "Service", GATEWAY)
    names = {p["name"] for p in service["spec"]["ports"]}
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == GATEWAY
            assert backend["port"]["name"] in names


# The paths the page and the API need from outside; everything else stays in the cluster.
PUBLIC_PATHS = {"/classify", "/v1/model", "/healthz", "/readyz", "/"}
INTERNAL_PREFIXES = ("/metrics", "/docs", "/redoc", "/openapi.json")
# ingress-nginx's default upstream-keepalive-timeout (controller ConfigMap), in seconds: how
# long nginx keeps an idle connection to a gateway for reuse. docs/deploy.md says to keep it
# below CA_KEEP_ALIVE_TIMEOUT_S when you change it.
INGRESS_NGINX_UPSTREAM_KEEPALIVE_S = 60


def route_paths(routes: Iterable[object]) -> Iterator[str]:
    """Paths of routes and mounts, descending into included routers (FastAPI may wrap
    them: `original_router`) and mounted sub-apps."""
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str):
            yield path
        inner = getattr(route, "original_router", None) or route
        yield from route_paths(getattr(inner, "routes", None) or ())


def app_routes() -> set[str]:
    """Every path the real gateway app serves (schema and docs routes included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from service.gateway.app import create_app

    paths = set(route_paths(create_app(Settings()).routes))
    assert {"/classify", "/metrics"} <= paths, f"routes not found where expected: {paths}"
    return paths


def nginx_matches(path: str, path_type: str, request_path: str) -> bool:
    """Whether an Ingress path matches a request path (the Ingress API's semantics:
    Exact is equality, Prefix matches whole path elements)."""
    if path_type == "Exact":
        return request_path == path
    assert path_type == "Prefix", f"{path}: pathType {path_type} has controller-specific rules"
    prefix = path.rstrip("/")
    return request_path == prefix or request_path.startswith(prefix + "/") or prefix == ""


def ingress_paths(objects: list[Manifest]) -> list[tuple[str, str]]:
    ingress = one(objects, "Ingress", GATEWAY)
    return [
        (path["path"], path["pathType"])
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]


def test_ingress_exposes_the_api_and_the_page_only(objects: list[Manifest]) -> None:
    routes = app_routes()
    paths = ingress_paths(objects)
    for path, path_type in paths:
        assert any(nginx_matches(path, path_type, route) for route in routes), (
            f"the Ingress routes {path} ({path_type}), which the gateway does not serve"
        )
    exposed = {r for r in routes if any(nginx_matches(p, t, r) for p, t in paths)}
    assert exposed >= PUBLIC_PATHS, f"not reachable from outside: {PUBLIC_PATHS - exposed}"
    internal = {r for r in routes if r.startswith(INTERNAL_PREFIXES)}
    assert "/metrics" in internal and "/openapi.json" in internal
    assert not exposed & internal, f"internal routes exposed: {sorted(exposed & internal)}"


def test_ingress_and_gateway_timeouts_fit_together(objects: list[Manifest]) -> None:
    """nginx takes the slow clients (it buffers whole requests), closes idle upstream
    connections before the gateway does, and waits longer than the gateway's own timeout."""
    annotations = one(objects, "Ingress", GATEWAY)["metadata"]["annotations"]
    config = gateway_config(objects)
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-request-buffering"] == "on"
    for key in ("CA_HEADER_TIMEOUT_S", "CA_KEEP_ALIVE_TIMEOUT_S", "CA_BODY_TIMEOUT_S"):
        assert float(config[key]) > 0, key
    assert float(config["CA_KEEP_ALIVE_TIMEOUT_S"]) > INGRESS_NGINX_UPSTREAM_KEEPALIVE_S, (
        "the gateway would close idle connections nginx still reuses: sporadic 502s"
    )
    request_timeout = float(config["CA_REQUEST_TIMEOUT_S"])
    assert float(annotations[prefix + "proxy-read-timeout"]) > request_timeout
    assert 0 < float(annotations[prefix + "proxy-connect-timeout"]) <= request_timeout
