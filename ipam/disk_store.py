"""host-local's on-disk store, so operators and tools that know host-local know ours.

Layout of `<dataDir>/<network name>/`:
  <ip>                    one file per held address: "<containerID>\\r\\n<ifname>"
  last_reserved_ip.<N>    the round-robin hint of range set N
  lock                    flock()ed for the whole of every operation
  boot_id                 the boot the reservations were made in (ours; host-local skips
                          it: not an address); see `_reclaim_earlier_boot`

Crash safety: a reservation is written under a temporary name, then link()ed to
`<ip>`; link fails when the name exists, so the claim is exclusive, and the name
never exists with partial content. A kill leaves at most a `.<ip>.*` temporary
file, which never blocks an address and which the next operation (ADD, DEL, GC) removes.
No fsync, as host-local: a reservation has to outlive the process that made it, not the
kernel. A crash or power cut that could lose an unsynced file ends the boot, and with it
every pod; the first operation of the next boot releases every reservation of the earlier
one (`_reclaim_earlier_boot`), so a lost file frees nothing that was still in use, and a
file left empty by one holds nobody (below). A flush per ADD cost 3-13 ms on ext4
(docs/benchmarks.md).
The round-robin hint is rewritten in place (a rename over it makes ext4 flush).

Files we did not write cleanly (host-local killed between create and write, or a
hand edit) are handled so that no address leaks forever:
  - an empty file holds nobody: `reserve` reclaims it and GC releases it;
  - a garbled file (not UTF-8, or no valid container id) keeps blocking its
    address, because someone wrote it on purpose, until GC releases it.
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator, Optional

from conf.cni import CONTAINER_ID_RE
from conf.errors import IOFailureError
from conf.flannel import ensure_dir
from ipam import boot
from ipam.store import IPAddr, Reservation, ip_sort_key

log = logging.getLogger("flannelette.ipam")

LOCK_FILE = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
LINE_BREAK = "\r\n"
BOOT_MARKER = "boot_id"


class DiskStore:
    """The `Store` of one network: `<data_dir>/<network>/`. Safe across processes
    and threads: each operation opens its own lock fd, and flock() locks of two
    open file descriptions exclude each other even inside one process."""

    def __init__(self, data_dir: str, network: str):
        self.dir = os.path.join(data_dir, network)

    # ---------------------------------------------------------------- locking

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The flock for one operation."""
        try:
            ensure_dir(self.dir)  # 0755 and its parents too, whatever the umask
            fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise IOFailureError(f"cannot open the IPAM store {self.dir}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._reclaim_earlier_boot()
            yield
        except OSError as e:  # a full or read-only disk: the spec's I/O failure, not a crash
            raise IOFailureError(f"IPAM store {self.dir}: {e.strerror or e}") from None
        finally:
            os.close(fd)  # closing drops the flock

    def _reclaim_earlier_boot(self) -> None:
        """Release every reservation of an earlier boot (no pod survives a reboot), one
        log line each, before this boot's first operation; costs one small read after.
        The round-robin hints stay: allocation goes on after the last address handed
        out, so the least recently used addresses come back first, as before the reboot."""
        boots = boot.earlier_boot(self.dir, BOOT_MARKER)
        if boots is None:
            return
        for r in self.list_all():
            self.release(r.ip)
            log.info("released %s of container %s ifname %s: reserved before this boot "
                     "(boot_id %s, now %s)", r.ip, r.container_id or "(unknown)",
                     r.ifname or "(unknown)", boots[0], boots[1])
        self.remove_stale_temp_files()
        boot.record_boot(self.dir, BOOT_MARKER, boots[1])

    # ---------------------------------------------------------------- reservations

    def reserve(self, container_id: str, ifname: str, ip: IPAddr, range_id: int) -> bool:
        path = self._path(ip)
        if os.path.lexists(path):
            if not self._is_empty(path):
                return False
            os.unlink(path)  # a writer died before writing anything: nobody holds it
        if not self._link_new(path, f"{container_id}{LINE_BREAK}{ifname}".encode()):
            return False
        self._write_hint(self._last_reserved_path(range_id), str(ip))
        return True

    def last_reserved_ip(self, range_id: int) -> Optional[IPAddr]:
        try:
            with open(self._last_reserved_path(range_id), encoding="ascii") as f:
                return ipaddress.ip_address(f.read().strip())
        except (OSError, ValueError):
            return None  # missing or unreadable hint: start from the first address

    def release(self, ip: IPAddr) -> None:
        try:
            os.unlink(self._path(ip))
        except FileNotFoundError:
            pass

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddr]:
        released = self.get_by_id(container_id, ifname)
        for ip in released:
            self.release(ip)
        return released

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddr]:
        """Every ADD and DEL reads every file under the lock, so files that cannot hold
        the container id are skipped before anything is decoded or parsed."""
        needle = container_id.encode()
        out = []
        try:
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return []
        try:  # names relative to the directory's fd: a fifth less time than full paths
            for name in os.listdir(dir_fd):
                if name[0] == ".":
                    # Under the lock no writer is alive to own a temporary file: one killed
                    # mid-reserve left it. Every ADD and DEL sweeps them, not only GC.
                    self._unlink_at(name, dir_fd)
                    continue
                if not (name[0].isdigit() or ":" in name):
                    continue  # lock, last_reserved_ip.N
                data = self._read_bytes(name, dir_fd)
                if needle not in data:
                    continue
                try:
                    ip = ipaddress.ip_address(name)
                except ValueError:
                    continue  # a foreign file
                if self._parse(ip, data).belongs_to(container_id, ifname):
                    out.append(ip)
        finally:
            os.close(dir_fd)
        return sorted(out, key=ip_sort_key)

    def list_all(self) -> list[Reservation]:
        out = []
        for name in self._names():
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N, temporary files, foreign files
            out.append(self._read(ip))
        return sorted(out, key=lambda r: ip_sort_key(r.ip))

    def remove_stale_temp_files(self) -> int:
        """Drop `.<name>.*` files left by a writer killed mid-write. Only call with
        the lock held: then no writer is alive to own them."""
        removed = 0
        for name in self._names():
            if name.startswith("."):
                try:
                    os.unlink(os.path.join(self.dir, name))
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    # ---------------------------------------------------------------- files

    def _path(self, ip: IPAddr) -> str:
        return os.path.join(self.dir, str(ip))

    def _last_reserved_path(self, range_id: int) -> str:
        return os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_id}")

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.dir)
        except FileNotFoundError:
            return []

    @staticmethod
    def _unlink_at(name: str, dir_fd: int) -> None:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass

    @staticmethod
    def _read_bytes(path: str, dir_fd: Optional[int] = None) -> bytes:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return b""
        try:
            return os.read(fd, 4096)
        except OSError:
            return b""
        finally:
            os.close(fd)

    def _read(self, ip: IPAddr) -> Reservation:
        return self._parse(ip, self._read_bytes(self._path(ip)))

    @staticmethod
    def _parse(ip: IPAddr, data: bytes) -> Reservation:
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            text = ""
        container_id, _, ifname = text.partition(LINE_BREAK)
        if not CONTAINER_ID_RE.match(container_id):
            return Reservation(ip=ip, container_id="", ifname="")
        return Reservation(ip=ip, container_id=container_id, ifname=ifname.strip())

    @staticmethod
    def _is_empty(path: str) -> bool:
        try:
            with open(path, "rb") as f:
                return not f.read(4096).strip()
        except FileNotFoundError:
            return True

    def _link_new(self, path: str, content: bytes) -> bool:
        """Write `content` to a temporary file (mkstemp: mode 0600), link it to `path`."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix="." + os.path.basename(path) + ".")
        try:
            os.write(fd, content)
            os.link(tmp, path)
        except OSError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        finally:
            os.close(fd)
            os.unlink(tmp)
        return True

    def _create_whole(self, path: str, content: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix="." + os.path.basename(path) + ".")
        try:
            os.write(fd, content)
            os.fchmod(fd, 0o644)
            os.link(tmp, path)
        finally:
            os.close(fd)
            os.unlink(tmp)

    def _write_hint(self, path: str, text: str) -> None:
        """Overwrite in place, unsynced (a hint lost in a power cut only moves where the
        round-robin starts). A shorter address is padded with spaces over the old one's
        tail before the file is cut, so a kill between the two calls leaves a valid
        address ("10.1.0.9  "), never a mix of old and new ("10.1.0.90")."""
        data = text.encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # the range's first reservation: never an empty hint either
            self._create_whole(path, data)
            return
        try:
            old_size = os.fstat(fd).st_size
            os.pwrite(fd, data.ljust(old_size, b" "), 0)
            if old_size > len(data):
                os.ftruncate(fd, len(data))  # not to zero first: ext4 would flush on close
        finally:
            os.close(fd)
