"""The CNI dispatch shared by every executable: (env, stdin) -> (exit status, stdout).

Pure: no IO of its own, so the same function serves the executables, the daemon's
fast path and the unit tests. stdout carries the result or the error JSON only.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Union

from conf.cni import (SUPPORTED_VERSIONS, Result, RuntimeEnv, check_stdin_size, decode_config, load_env,
                      version_tuple)
from conf.errors import CniError, IncompatibleVersionError, InternalError
from conf.steps import mark

LATEST = SUPPORTED_VERSIONS[-1]
log = logging.getLogger("flannelette")


@dataclass
class Request:
    env: RuntimeEnv
    raw: dict  # the decoded network config from stdin
    stdin: bytes
    netns_fd: Optional[int] = None  # an open fd of CNI_NETNS, when the fast path passed one

    @property
    def version(self) -> str:
        return self.raw["cniVersion"]


Reply = Union[Result, dict, None]
Handler = Callable[[Request], Reply]

# The oldest config version that may use each verb (the Go skel's rule).
_MIN_VERSION = {"CHECK": (0, 4, 0), "GC": (1, 1, 0), "STATUS": (1, 1, 0)}


def version_reply(stdin: bytes) -> dict:
    version = LATEST
    try:
        raw = json.loads(stdin) if stdin.strip() else {}
        if isinstance(raw, dict) and isinstance(raw.get("cniVersion"), str) and raw["cniVersion"]:
            version = raw["cniVersion"]
    except (ValueError, RecursionError):  # VERSION answers whatever the config is
        pass
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def run(handlers: dict[str, Handler], environ: dict[str, str], stdin: bytes,
        netns_fd: Optional[int] = None) -> tuple[int, bytes]:
    """Run one CNI invocation; never raises."""
    version = LATEST
    try:
        check_stdin_size(stdin)  # first, as the shim does, so both paths give the same answer
        env = load_env(environ)
        if env.command == "VERSION":
            return 0, _dump(version_reply(stdin))
        raw = decode_config(stdin)
        version = raw["cniVersion"]
        minimum = _MIN_VERSION.get(env.command)
        if minimum and version_tuple(version) < minimum:
            raise IncompatibleVersionError(
                f"{env.command} needs cniVersion {'.'.join(map(str, minimum))} or newer, "
                f"config says {version}")
        handler = handlers.get(env.command)
        if handler is None:  # a verb we have nothing to do for (spec: success)
            return 0, b""
        mark("decode request")
        reply = handler(Request(env=env, raw=raw, stdin=stdin, netns_fd=netns_fd))
    except CniError as e:
        log.info("CNI error %d: %s", e.code, e.msg)
        return 1, _dump(e.to_dict(version))
    except Exception as e:  # the one seam where foreign exceptions become 999
        # The traceback rides on exc_info: a daemon's log keeps it, an executable's
        # one-line stderr formatter drops it.
        log.error("internal error: %s: %s", type(e).__name__, e, exc_info=True)
        err = InternalError(f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return 1, _dump(err.to_dict(version))
    if reply is None:
        return 0, b""
    if isinstance(reply, Result):
        reply = reply.render(version)
    return 0, _dump(reply)
