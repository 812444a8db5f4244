"""`flannelette` run in-process: env + stdin -> the handlers -> stdout, exit status.

The lean shim (cni_plugin/shim.py) hands requests to the warm daemon instead and
falls back to this path when the daemon is not there.
"""
from __future__ import annotations

import os
import sys
import threading
import types


def _without_pydantic_plugin_discovery() -> None:
    """pydantic looks for its plugins through importlib.metadata on the first model build,
    which imports email, zipfile and pathlib: ~15 ms of every cold call. We use none."""
    loader = types.ModuleType("pydantic.plugin._loader")
    loader.get_plugins = lambda: ()
    sys.modules.setdefault("pydantic.plugin._loader", loader)


_without_pydantic_plugin_discovery()  # before conf imports pydantic  # noqa: E402

from conf.cni import MAX_STDIN  # noqa: E402
from conf.dispatch import run  # noqa: E402
from ipam.main import setup_stderr_logging  # noqa: E402

PROG = "flannelette"


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
    setup_stderr_logging(PROG)  # one line per error on stderr, never a traceback
    stdin = sys.stdin.buffer.read(MAX_STDIN + 1) if sys.stdin is not None else b""
    status, out = serve(dict(os.environ), stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
