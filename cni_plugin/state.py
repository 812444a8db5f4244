"""Per-attachment state under the plugin's dataDir: what ADD did, so DEL can undo it.

One JSON file per (container id, ifname) in `<dataDir>/<network name>/`. It holds the
network config as ADD rendered it (IPAM config with the subnet.env values of that
moment) and the result, so DEL and GC act on what was really set up even when
subnet.env changed or vanished since.

Files of an earlier boot describe veths that died with it: the first save of a new
boot forgets them (ipam/boot.py; the marker `attachments.boot_id`, under `lock`). Only
the files go: a veth of that name, if any, belongs to this boot.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from typing import Any, Iterator, Optional

from pydantic import BaseModel, Field, ValidationError

from conf.flannel import ensure_dir
from ipam import boot


log = logging.getLogger("flannelette")
BOOT_MARKER = "attachments.boot_id"
LOCK_FILE = "lock"


class AttachmentState(BaseModel):
    container_id: str
    ifname: str
    netns: str = ""
    host_veth: str
    bridge: str
    ipam: dict[str, Any] = Field(default_factory=dict)  # the IPAM config ADD used
    config: dict[str, Any] = Field(default_factory=dict)  # the full network config ADD got
    result: dict[str, Any] = Field(default_factory=dict)  # the ADD result, 1.1.0 shape


def network_dir(data_dir: str, network: str) -> str:
    return os.path.join(data_dir, network)


def state_path(data_dir: str, network: str, container_id: str, ifname: str) -> str:
    # A container id never holds ':', so "<id>:<ifname>" cannot collide.
    return os.path.join(network_dir(data_dir, network), f"{container_id}:{ifname}.json")


def _staging_path(path: str) -> str:
    """One fixed temporary name per attachment: a write killed half-way leaves one file,
    which the retried ADD overwrites and DEL removes (a random name would pile up)."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp")


def save_state(data_dir: str, network: str, state: AttachmentState) -> str:
    path = state_path(data_dir, network, state.container_id, state.ifname)
    staging = _staging_path(path)
    directory = os.path.dirname(path)
    ensure_dir(directory)
    lock = os.open(os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # against a concurrent forget_earlier_boot only
        forget_earlier_boot(data_dir, network)
        # No fsync: after a crash a lost or empty file only makes DEL fall back to the
        # derived veth name and the request's IPAM config, which is what it holds anyway.
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, state.model_dump_json().encode())
        finally:
            os.close(fd)
        os.rename(staging, path)  # readers see the old file or the whole new one
    finally:
        os.close(lock)
    return path


def forget_earlier_boot(data_dir: str, network: str) -> None:
    """Remove the state files of an earlier boot, one log line each; the lock is held."""
    directory = network_dir(data_dir, network)
    boots = boot.earlier_boot(directory, BOOT_MARKER)
    if boots is None:
        return
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json") or name.endswith(".json.tmp"):
            os.unlink(os.path.join(directory, name))
            log.info("forgot attachment %s of network %s: set up before this boot (boot_id %s, now %s)",
                     name.lstrip(".").removesuffix(".tmp").removesuffix(".json"), network, *boots)
    boot.record_boot(directory, BOOT_MARKER, boots[1])


def _read(path: str) -> Optional[AttachmentState]:
    try:
        with open(path, "rb") as f:
            return AttachmentState.model_validate_json(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as e:
        # A damaged file must not block DEL: fall back to what the request itself says.
        log.warning("ignoring unreadable attachment state %s: %s", path, str(e).splitlines()[0])
        return None


def load_state(data_dir: str, network: str, container_id: str, ifname: str) -> Optional[AttachmentState]:
    return _read(state_path(data_dir, network, container_id, ifname))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_state(data_dir: str, network: str, container_id: str, ifname: str) -> None:
    path = state_path(data_dir, network, container_id, ifname)
    _unlink(path)
    _unlink(_staging_path(path))


def remove_staging(data_dir: str, network: str, container_id: str, ifname: str) -> None:
    _unlink(_staging_path(state_path(data_dir, network, container_id, ifname)))


def list_staging(data_dir: str, network: str) -> list[tuple[str, str]]:
    """(container id, ifname) of every staging file: a save killed before its rename.
    The name says whose it is, so GC can drop it even when no state file was ever written."""
    out = []
    for name in _names(network_dir(data_dir, network)):
        if name.startswith(".") and name.endswith(".json.tmp"):
            container_id, sep, ifname = name[1:-len(".json.tmp")].partition(":")
            if sep:
                out.append((container_id, ifname))
    return out


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def list_states(data_dir: str, network: str) -> Iterator[AttachmentState]:
    directory = network_dir(data_dir, network)
    for name in _names(directory):
        if name.endswith(".json") and not name.startswith("."):
            state = _read(os.path.join(directory, name))
            if state is not None:
                yield state


def dump_config(raw: dict) -> bytes:
    return json.dumps(raw, separators=(",", ":")).encode()
