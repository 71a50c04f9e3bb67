"""The API documentation pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), served offline.

FastAPI's own pages load their JavaScript and CSS from a CDN, so on a machine without
internet (or behind a strict proxy) `/docs` is blank. Here the gateway serves the assets
itself, from the files the `fastapi-offline` package ships (Swagger UI 5, Apache-2.0;
ReDoc 2, MIT; the package MIT). Only its files are used, never its code: the package is
located, not imported. Both pages carry a Content-Security-Policy that lets the browser
load nothing from anywhere but the gateway (ReDoc's footer would fetch its vendor's logo
from a CDN; offline that is only a missing picture, and here it is never asked for).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from service.errors import NotFound

ASSETS_PACKAGE = "fastapi_offline"
ASSETS_PATH = "/docs/assets"
# The only files served, with their media types: a fixed set, so no path from a client
# ever reaches the file system.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
_CACHE = {"Cache-Control": "public, max-age=86400"}
# The pages' inline start-up script and styles need 'unsafe-inline'; ReDoc runs its search
# in a worker made from a blob: URL.
_OFFLINE_ONLY = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'"
}

router = APIRouter(include_in_schema=False)


def assets_dir() -> Path:
    """Where the installed asset package keeps its files; raises `NotFound` without it."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"the API docs' assets are not installed (pip install {ASSETS_PACKAGE})")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def _urls(request: Request) -> tuple[str, str]:
    """The OpenAPI document's URL and the assets' base URL, under any mount prefix."""
    root = request.scope.get("root_path", "")
    return f"{root}{request.app.openapi_url}", f"{root}{ASSETS_PATH}"


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    openapi_url, assets = _urls(request)
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        # No call to the public validator service (its badge would fetch from outside).
        swagger_ui_parameters={"validatorUrl": None},
    )
    page.headers.update(_OFFLINE_ONLY)
    return page


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    openapi_url, assets = _urls(request)
    page = get_redoc_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{assets}/redoc.standalone.js",
        redoc_favicon_url=f"{assets}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(_OFFLINE_ONLY)
    return page


@router.get(ASSETS_PATH + "/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no such documentation asset: {name[:64]!r}")
    return FileResponse(assets_dir() / name, media_type=media_type, headers=_CACHE)
