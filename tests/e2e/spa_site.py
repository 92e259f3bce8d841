"""A single-page web app on a loopback port of its own, served the way a static host
serves one (nginx's ``try_files $uri /index.html``, the ``/* /index.html 200`` rule
OHIF ships for Netlify): a file when it exists, else ``index.html``, so the app's
own routes (``/viewer``, ``/callback``) load the app; plus files the site supplies
itself, such as its ``app-config.js``.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

# module scripts and streamed WebAssembly are refused under any other type
TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".css": "text/css",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".html": "text/html",
}


@dataclass
class SpaSite:
    """The running site: its origin, the files it supplies, the paths it was asked for."""

    server: ThreadingHTTPServer
    supplied: dict[str, bytes] = field(default_factory=dict)  # path -> body
    hits: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the browser drops connections it no longer needs (a navigation)


def _handler(site: SpaSite, root: Path) -> type[SimpleHTTPRequestHandler]:
    class Handler(SimpleHTTPRequestHandler):
        extensions_map = {**SimpleHTTPRequestHandler.extensions_map, **TYPES}

        def send_head(self) -> BinaryIO | io.BytesIO | None:
            path = unquote(urlsplit(self.path).path)
            site.hits.append(path)
            if path in site.supplied:
                return self._supplied(path, site.supplied[path])
            if path == "/" or not (root / path.lstrip("/")).is_file():
                self.path = "/index.html"
            return super().send_head()

        def _supplied(self, path: str, body: bytes) -> io.BytesIO:
            self.send_response(200)
            self.send_header("Content-Type", f"{self.guess_type(path)}; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            return io.BytesIO(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep the test output clean

    return Handler


@contextmanager
def serving(root: Path) -> Iterator[SpaSite]:
    """Serve the app in ``root`` until the block ends."""
    site = SpaSite(_Server(("127.0.0.1", 0), SimpleHTTPRequestHandler))
    site.server.RequestHandlerClass = partial(_handler(site, root), directory=str(root))
    with running(site.server):
        yield site


@contextmanager
def running(server: ThreadingHTTPServer) -> Iterator[None]:
    """Run ``server`` in a thread of its own until the block ends, then close it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
