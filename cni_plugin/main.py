"""`flannelette` run in-process: env + stdin -> the handlers -> stdout, exit status.

The lean shim (cni_plugin/shim.py) hands requests to the warm daemon instead and
falls back to this path when the daemon is not there.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

from conf.cni import MAX_STDIN
from conf.dispatch import run

LOG_FORMAT = "flannelette: %(message)s"


class OneLine(logging.Formatter):
    """A runtime logs our stderr line by line: keep each record on one line, no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        lines = [line for line in super().format(record).splitlines() if line.strip()]
        if len(lines) > 1:  # an internal error: its first line and the exception line say it all
            return f"{lines[0]} {lines[-1].strip()}"
        return lines[0] if lines else ""


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine(LOG_FORMAT))
    root = logging.getLogger("flannelette")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def serve(environ: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Run one request on a worker thread: the handlers switch netns per thread, never the main one."""
    from cni_plugin.handlers import HANDLERS

    reply: list[tuple[int, bytes]] = []
    worker = threading.Thread(target=lambda: reply.append(run(HANDLERS, environ, stdin)),
                              name="cni-request")
    worker.start()
    worker.join()
    return reply[0]


def main() -> None:
    setup_logging()
    stdin = sys.stdin.buffer.read(MAX_STDIN + 1)  # one byte over the cap is enough to refuse
    status, out = serve(dict(os.environ), stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
