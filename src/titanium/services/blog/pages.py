"""The blog web UI: one HTML shell for every page, plus the CSS and JS it loads.

The pages render in the browser from the public HTTP API (see docs/ui.md), so
this module only serves files. They are read and hashed once when the app is
built: asset URLs carry the content hash, which lets browsers keep them for a
year, while the shell itself is revalidated on every load so a new release's
hashes are picked up at once. The stylesheet is inlined into the shell, so the
first paint waits for no second request.
"""

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response

from titanium.db.tables import INTEGER_MAX
from titanium.errors import NotFound

STATIC = Path(__file__).parent / "static"
SHELL = "index.html"
# Only these kinds are published; any other file in static/ stays private.
MEDIA_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# Defence in depth behind the renderer, which never builds HTML from post text:
# no inline script, no inline style but the shell's own (allowed by its hash), no
# plugins; scripts and API calls from this origin only.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' {style_hashes}; "
    "connect-src 'self'; img-src 'self' https: http:; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# {{name}} becomes the file's versioned URL, {{inline:name}} its content.
_PLACEHOLDER = re.compile(r"\{\{\s*(inline:)?([\w.-]+)\s*\}\}")

PostIdPath = Annotated[int, PathParam(ge=1, le=INTEGER_MAX)]


@dataclass(frozen=True)
class Asset:
    """One file served under /blog/static/, with the hash its URL carries."""

    body: bytes
    media_type: str
    version: str

    @property
    def etag(self) -> str:
        """Strong validator: the content hash."""
        return f'"{self.version}"'


@dataclass(frozen=True)
class Site:
    """The shell page and the assets, loaded once per app."""

    shell: bytes
    shell_etag: str
    content_security_policy: str
    assets: dict[str, Asset]

    def page_headers(self) -> dict[str, str]:
        """Headers of every HTML page."""
        return {
            "Content-Security-Policy": self.content_security_policy,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": REVALIDATE,
            "ETag": self.shell_etag,
        }


def _version(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def load_site() -> Site:
    """Read the static files and fill the shell's placeholders."""
    assets = {
        path.name: Asset(body, MEDIA_TYPES[path.suffix], _version(body))
        for path in sorted(STATIC.iterdir())
        if path.is_file() and path.suffix in MEDIA_TYPES
        for body in [path.read_bytes()]
    }
    style_hashes: list[str] = []

    def fill(match: re.Match[str]) -> str:
        inline, name = match.group(1), match.group(2)
        if name not in assets:
            # A packaging mistake; better to refuse to start than to serve a broken page.
            raise RuntimeError(f"{SHELL} refers to {name}, which is not in {STATIC}")
        if not inline:
            return f"/blog/static/{name}?v={assets[name].version}"
        text = assets[name].body.decode("utf-8")
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        style_hashes.append(f"'sha256-{digest}'")
        return text

    shell = _PLACEHOLDER.sub(fill, (STATIC / SHELL).read_text(encoding="utf-8")).encode()
    return Site(
        shell=shell,
        shell_etag=f'"{_version(shell)}"',
        content_security_policy=CONTENT_SECURITY_POLICY.format(style_hashes=" ".join(style_hashes)),
        assets=assets,
    )


def _not_modified(etag: str, if_none_match: str | None) -> bool:
    if if_none_match is None:
        return False
    return any(tag.strip() in (etag, f"W/{etag}", "*") for tag in if_none_match.split(","))


def add_pages(app: FastAPI) -> None:
    """Serve the UI: the shell at every page URL, the assets under /blog/static/."""
    loaded = load_site()
    page_methods = ["GET", "HEAD"]

    @app.api_route("/blog", methods=page_methods, include_in_schema=False)
    async def blog_root(request: Request) -> RedirectResponse:
        query = request.url.query
        return RedirectResponse("/blog/" + (f"?{query}" if query else ""))

    async def shell(if_none_match: str | None) -> Response:
        headers = loaded.page_headers()
        if _not_modified(loaded.shell_etag, if_none_match):
            return Response(status_code=304, headers=headers)
        return Response(loaded.shell, media_type="text/html; charset=utf-8", headers=headers)

    IfNoneMatch = Annotated[str | None, Header()]

    # Every URL a page can be shared or reloaded at gets the same shell; the
    # script reads the path and renders the page.
    @app.api_route("/blog/", methods=page_methods, include_in_schema=False)
    @app.api_route("/blog/write", methods=page_methods, include_in_schema=False)
    @app.api_route("/blog/login", methods=page_methods, include_in_schema=False)
    @app.api_route("/blog/signup", methods=page_methods, include_in_schema=False)
    async def page(if_none_match: IfNoneMatch = None) -> Response:
        return await shell(if_none_match)

    @app.api_route("/blog/posts/{post_id}", methods=page_methods, include_in_schema=False)
    @app.api_route("/blog/posts/{post_id}/edit", methods=page_methods, include_in_schema=False)
    async def post_page(post_id: PostIdPath, if_none_match: IfNoneMatch = None) -> Response:
        # The id is checked here so /blog/posts/abc is an error, not a blank shell;
        # whether the post exists is for the page to find out from the API.
        return await shell(if_none_match)

    @app.api_route("/blog/static/{name}", methods=page_methods, include_in_schema=False)
    async def static(
        name: str,
        v: Annotated[str | None, Query(max_length=64)] = None,
        if_none_match: IfNoneMatch = None,
    ) -> Response:
        asset = loaded.assets.get(name)
        if asset is None:
            raise NotFound("no such file")
        # Only the URL with the current hash may be cached for good; any other
        # (an old page asking for a file that has changed since) must revalidate.
        cache = IMMUTABLE if v == asset.version else REVALIDATE
        headers = {"ETag": asset.etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
        if _not_modified(asset.etag, if_none_match):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)
