"""/healthz, /readyz and /metrics over HTTP, as flanneld's --healthz-ip/--healthz-port.

/healthz is 200 while the process runs; /readyz turns 200 only once subnet.env is
written (the data plane is up and pods may start); /metrics is Prometheus text.
Served from one thread of a ThreadingHTTPServer; the readiness flag is a threading.Event.
"""
from __future__ import annotations

import http.server
import logging
import socket
import threading
from typing import Optional

from daemon.metrics import Metrics

log = logging.getLogger("flanneletted.health")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            ready = self.server.ready.is_set()
            self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        elif path == "/metrics":
            self._reply(200, self.server.metrics.render().encode(),
                        "text/plain; version=0.0.4; charset=utf-8")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # probes every few seconds: keep them quiet
        log.debug("http %s", fmt % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    ready: threading.Event
    metrics: Metrics


class _Server6(_Server):
    address_family = socket.AF_INET6


class HealthServer:
    """Binds at start(); port 0 in the settings means off (flanneld's default)."""

    def __init__(self, ip: str, port: int, metrics: Metrics, ready: threading.Event):
        self.ip, self.port = ip, port
        self.metrics, self.ready = metrics, ready
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if not self.port:
            return
        server_class = _Server6 if ":" in self.ip else _Server
        self._server = server_class((self.ip, self.port), _Handler)
        self._server.ready, self._server.metrics = self.ready, self.metrics
        self._thread = threading.Thread(target=self._server.serve_forever, name="healthz",
                                        daemon=True)
        self._thread.start()
        log.info("serving /healthz /readyz /metrics address=%s:%d", self.ip, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
