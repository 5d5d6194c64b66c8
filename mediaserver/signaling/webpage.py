"""The session page and the JavaScript SDK, served as files from ``web/`` (no build step).

Only the files that ship in the package are served, by name, never a path a client builds.
The page reads its access token from the URL fragment (``/web/#token=...``), which browsers
never send to the server, so tokens do not reach access logs or proxies.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

WEB_DIR = Path(__file__).with_name("web")
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml", ".json": "application/json"}
# The page talks only to its own origin (the signalling WebSocket included) and loads
# nothing from elsewhere; camera and microphone only for this origin.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
        "media-src 'self' blob: mediastream:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Permissions-Policy": "camera=(self), microphone=(self), display-capture=(self)",
    "Cache-Control": "no-cache",
}


def _files() -> dict[str, Path]:
    return {p.name: p for p in WEB_DIR.iterdir()
            if p.is_file() and p.suffix in _TYPES}


def add_routes(app: web.Application) -> None:
    files = _files()

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        path = files.get(name)
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": _TYPES[path.suffix],
                                               **_HEADERS})

    async def to_page(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/web/")

    app.router.add_get("/web", to_page)
    app.router.add_get("/web/", serve)
    app.router.add_get("/web/{name}", serve)
