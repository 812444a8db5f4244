"""Structured logs: one `key=value` line per event on stderr.

Call sites log "what happened key=value ..."; the formatter quotes the phrase as msg=
and keeps the pairs, so `time=... level=info logger=leases msg="acquired lease"
subnet=10.244.1.0-24` greps and parses alike. Tracebacks are folded into one line.
"""
from __future__ import annotations

import logging
import re
import sys
import time

_PAIR = re.compile(r"\s(?=[A-Za-z_][A-Za-z0-9_.]*=)")


def _quote(value: str) -> str:
    if value and not re.search(r'[\s"=]', value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        phrase = _PAIR.split(text, 1)[0]
        pairs = text[len(phrase):]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        logger = record.name.removeprefix("flanneletted.")
        line = (f"time={stamp}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
                f"logger={logger} msg={_quote(phrase.strip())}{pairs}")
        if record.exc_info:
            line += " traceback=" + _quote(self.formatException(record.exc_info))
        return line


def setup_logging(verbosity: int = 0, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 1 else logging.INFO)
    for noisy in ("pyroute2", "grpc"):  # their debug output would drown ours at -v 1
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 5 else logging.WARNING)
