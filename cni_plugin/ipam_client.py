"""IPAM calls: the built-in `flannelette-ipam` in-process, any other type exec'd from CNI_PATH.

The exec path follows the reference plugins (libcni's invoke package): same CNI_*
environment with the command of the call, the full network config on stdin, the
delegate's stderr passed through to ours, its error code kept.
"""
from __future__ import annotations

import json
import os
from typing import Optional

from conf.cni import Result, RuntimeEnv, load_result
from conf.dispatch import Request
from conf.errors import CniError, DelegateError
from conf.plugin import IPAM_TYPE

from cni_plugin.state import dump_config


def ipam_config(raw: dict, ipam: dict, subnet_file: str) -> dict:
    """The network config an IPAM call gets: ours, with the ipam section rendered.

    The built-in IPAM reads the plugin's subnetFile unless its own config names one.
    """
    ipam = dict(ipam)
    if ipam.get("type", IPAM_TYPE) == IPAM_TYPE:
        ipam.setdefault("subnetFile", subnet_file)
    return {**raw, "ipam": ipam}


def call_ipam(env: RuntimeEnv, command: str, raw: dict) -> Optional[Result]:
    """Run IPAM `command` for the config `raw`; returns the ADD result, else None."""
    env = env.model_copy(update={"command": command})
    kind = raw["ipam"].get("type", IPAM_TYPE)
    if kind == IPAM_TYPE:
        return _in_process(env, raw)
    return _exec(kind, env, raw)


def _in_process(env: RuntimeEnv, raw: dict) -> Optional[Result]:
    from ipam.plugin import HANDLERS  # imported on first use: the daemon may not need it

    handler = HANDLERS.get(env.command)
    if handler is None:
        return None
    reply = handler(Request(env=env, raw=raw, stdin=dump_config(raw)))
    if isinstance(reply, dict):
        return load_result(reply)
    return reply if isinstance(reply, Result) else None


def find_plugin(kind: str, path: list[str]) -> str:
    if "/" in kind or kind in ("", ".", ".."):
        raise DelegateError(f"ipam.type {kind!r} is not a plugin name")
    for directory in path:
        candidate = os.path.join(directory, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise DelegateError(f"failed to find IPAM plugin {kind!r} in CNI_PATH {':'.join(path) or '(empty)'}")


def delegate_environ(env: RuntimeEnv) -> dict[str, str]:
    """Our process environment without CNI_*, plus the CNI_* of this request."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    out.update({
        "CNI_COMMAND": env.command,
        "CNI_CONTAINERID": env.container_id,
        "CNI_NETNS": env.netns,
        "CNI_IFNAME": env.ifname,
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in env.args.items()),
        "CNI_PATH": ":".join(env.path),
    })
    return out


def _exec(kind: str, env: RuntimeEnv, raw: dict) -> Optional[Result]:
    import subprocess  # only for a delegated IPAM: a cold built-in call never pays for it

    exe = find_plugin(kind, env.path)
    try:
        proc = subprocess.run([exe], input=dump_config(raw), stdout=subprocess.PIPE,
                              env=delegate_environ(env), check=False)
    except OSError as e:
        raise DelegateError(f"cannot run IPAM plugin {exe}: {e.strerror}") from None
    out = proc.stdout
    if proc.returncode != 0:
        raise _delegate_error(kind, proc.returncode, out)
    if env.command != "ADD":
        return None
    try:
        return load_result(json.loads(out))
    except (ValueError, CniError) as e:
        raise DelegateError(f"IPAM plugin {kind} printed a result that is not valid CNI JSON",
                            str(e)[:200]) from None


def _delegate_error(kind: str, status: int, out: bytes) -> CniError:
    try:
        err = json.loads(out)
        code, msg = int(err["code"]), str(err["msg"])
    except (ValueError, KeyError, TypeError):
        text = out.decode(errors="replace").strip()[:200]
        return DelegateError(f"IPAM plugin {kind} failed with exit status {status}",
                             text or "it printed no error JSON")
    return CniError(f"IPAM plugin {kind}: {msg}", str(err.get("details", "")), code=code)
