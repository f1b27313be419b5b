"""A real HTTP server on 127.0.0.1 for feed tests: /trickle/… answers 200 and then sends its body
one byte a second (what a hostile or broken server does); a path given in `routes` serves that
body with that Content-Type; any other path serves a good feed."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import FIXTURES

GOOD = (FIXTURES / "blogger.atom").read_bytes()
TRICKLE_SECONDS = 120  # longer than any test waits: a fetch that is not cut off never ends in time


class FeedServer:
    def __init__(self, routes: dict[str, tuple[str, bytes]] | None = None):
        self.routes = routes or {}  # path -> (Content-Type, body)
        self.requests: list[tuple[str, float]] = []  # (path, time.monotonic() on arrival)
        self.arrived = threading.Condition()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with owner.arrived:
                    owner.requests.append((self.path, time.monotonic()))
                    owner.arrived.notify_all()
                self.send_response(200)
                content_type, body = owner.routes.get(self.path, ("application/atom+xml", GOOD))
                self.send_header("Content-Type", content_type)
                if not self.path.startswith("/trickle/"):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.end_headers()
                try:
                    for byte in GOOD[:TRICKLE_SECONDS]:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(1)
                except OSError:  # the client gave up
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FeedServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_requests(self, count: int, timeout: float = 30) -> None:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{count} request(s) expected, got {self.requests}")
