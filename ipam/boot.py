"""Which boot a directory's records were written in, so a reboot leaks nothing.

After a reboot every pod is gone, but files under /var/lib survive: host-local keeps
every reservation until the range runs dry. The kernel gives each boot a random id
(/proc/sys/kernel/random/boot_id). A marker file in the directory records the boot in
which its current records were made; the first operation of a new boot sees another
id there, drops every record (they all predate the boot) and records the new id.

Rules, each the safe choice:
  - The marker is checked and rewritten only under the directory's lock, and every
    record is written under that lock after the check: a record of this boot is never
    dropped.
  - No marker (a host-local dir, or one from an older flannelette) is first sight: the
    records' boot is unknown, so nothing is dropped and the current id is recorded.
    Leftovers of that kind wait for CNI GC, as with host-local.
  - An unreadable boot id drops nothing and writes nothing.
  - The marker is written atomically but not synced: a marker lost in a power cut
    comes with a new boot, which drops the same records anyway.

FLANNELETTE_BOOT_ID_FILE names another file to read the boot id from (tests simulate
a reboot by changing its content). The daemon reads it from its own environment.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_ID_ENV = "FLANNELETTE_BOOT_ID_FILE"

log = logging.getLogger("flannelette.boot")

_kernel_boot_id: Optional[str] = None  # cannot change while this process lives


def current_boot_id() -> str:
    """The boot id, "" when it cannot be read."""
    global _kernel_boot_id
    path = os.environ.get(BOOT_ID_ENV) or BOOT_ID_FILE
    if path == BOOT_ID_FILE and _kernel_boot_id:
        return _kernel_boot_id
    boot_id = _read_small(path)
    if path == BOOT_ID_FILE:
        _kernel_boot_id = boot_id
    return boot_id


def earlier_boot(directory: str, marker: str) -> Optional[tuple[str, str]]:
    """(recorded boot, current boot) when the records under `directory` predate this
    boot and must go; then the caller drops them and calls `record_boot`. None when
    nothing is to drop (first sight records the current boot here). Lock held."""
    current = current_boot_id()
    if not current:
        return None
    recorded = _read_small(os.path.join(directory, marker))
    if recorded == current:
        return None
    if not recorded:
        record_boot(directory, marker, current)
        return None
    return recorded, current


def record_boot(directory: str, marker: str, boot_id: str) -> None:
    staging = os.path.join(directory, f".{marker}.tmp")  # a fixed name: a killed write leaves one file
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)  # whatever the umask
        os.write(fd, boot_id.encode() + b"\n")
    finally:
        os.close(fd)
    os.rename(staging, os.path.join(directory, marker))


def _read_small(path: str) -> str:
    """os-level: a buffered open() would cost more than the rest of the check."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return os.read(fd, 128).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return ""
    finally:
        os.close(fd)
