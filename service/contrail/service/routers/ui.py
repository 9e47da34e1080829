"""The dataset viewer in the browser, served by the API at `/ui`.

The pages are static files shipped in the package (no asset comes from another origin): an HTML
shell and ES modules that call the JSON API with the user's API key, kept in the tab's
sessionStorage and sent as `Authorization: Bearer` (never in a URL, never in a cookie, so there
is no ambient credential to forge requests with). The shell holds no data, so it needs no key;
every byte of a job comes through the authenticated, tenant-scoped `/v1` endpoints.

A strict Content-Security-Policy allows scripts, styles and requests from this origin only, and
no inline script or style.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import RedirectResponse, Response

from contrail.service.errors import ApiError
from contrail.service.routers import viewer

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    etag: str


def _load_assets() -> dict[str, _Asset]:
    """The shipped files, read once (a fixed set: no path from a request reaches the disk)."""
    assets: dict[str, _Asset] = {}
    folder = resources.files("contrail.service.viewer") / "static"
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            assets[entry.name] = _Asset(body, _TYPES[suffix], etag)
    return assets


ASSETS = _load_assets()

pages = APIRouter(prefix="/ui", include_in_schema=False)


def _asset_response(asset: _Asset, if_none_match: str | None) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if if_none_match == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@pages.get("")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308)


@pages.get("/")
async def ui_index(
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    return _asset_response(ASSETS["index.html"], if_none_match)


@pages.get("/static/{name}")
async def ui_static(
    name: Annotated[str, Path(max_length=64)],
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise ApiError(404, f"no viewer file {name!r}")
    return _asset_response(asset, if_none_match)


# `app.py` includes this one router: the pages and the viewer's JSON endpoints.
router = APIRouter()
router.include_router(pages)
router.include_router(viewer.router)
