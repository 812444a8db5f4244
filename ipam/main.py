"""`flannelette-ipam`: a CNI IPAM plugin executable (ADD, DEL, CHECK, GC, STATUS, VERSION).

The runtime (or a main plugin such as the reference `bridge`) runs it with the
CNI_* environment and the network config on stdin. stdout carries the result or
the error JSON only; stderr gets one line per error, never a traceback.
"""
from __future__ import annotations

import logging
import os
import sys

from conf.cni import MAX_STDIN
from conf.dispatch import run
from ipam.plugin import HANDLERS

PROG = "flannelette-ipam"


class OneLineFormatter(logging.Formatter):
    """`prog: first line of the message`; exception tracebacks are dropped."""

    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().splitlines()
        return f"{self.prog}: {lines[0] if lines else ''}"


def setup_stderr_logging(prog: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(prog))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main() -> None:
    setup_stderr_logging(PROG)
    # One byte over the limit lets decode_config tell "too big" from "exactly at the limit".
    stdin = sys.stdin.buffer.read(MAX_STDIN + 1) if sys.stdin is not None else b""
    status, out = run(HANDLERS, dict(os.environ), stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(status)


if __name__ == "__main__":
    main()
