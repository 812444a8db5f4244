"""One allocation store per subnet on a node, whichever network name reaches it.

host-local keys its store by network name (`<dataDir>/<name>/`), so two conflists
on one bridge and subnet (or a conflist renamed during an upgrade) hand out the same
address twice. flannelette keys the store by the subnets it allocates from and keeps
the by-name path as a symlink into it:

  <dataDir>/.subnets/<key>/        the store, host-local's layout inside (DiskStore):
      <ip>                         "<containerID>\\r\\n<ifname>", unchanged
      lock, last_reserved_ip.<N>
      owners/<network>/<ip>        empty marker: which network reserved <ip>
  <dataDir>/<network> -> .subnets/<key>   relative symlink, one per network name
  <dataDir>/.subnets/.lock         flock()ed while links are made or stores adopted

`<key>` is the sorted subnets of every range, "/" spelled "_" (`10.244.1.0_24`,
`10.244.1.0_24,fd00:1::_64`): two networks allocating from the same subnets share one
lock and one set of reservations, so no address goes out twice. The symlink keeps
`ls /var/lib/cni/networks/<name>` working for operators and leads any older
flannelette or host-local binary that still opens `<dataDir>/<name>/lock` to the same
lock and files.

GC of network A considers only A's reservations (marker under owners/A) and those
without any marker (written by an older binary through the symlink): a valid
attachment list of A says nothing about B's pods. DEL works by attachment
(container id + ifname) whatever the network name, so a renamed conflist releases
what the old name reserved.

Upgrade: a legacy real directory `<dataDir>/<name>/` is adopted the first time a
network reaches a store, under the legacy dir's own lock (so a running older binary
is excluded) and the store's lock: its reservations move in with a marker for the
directory's name, then the directory becomes the symlink. Every legacy directory
holding an address of the store's subnets is adopted at once, so network B's old
reservations block addresses before B is ever called again. An address both hold
with different owners (the double allocation this prevents from now on) stays with
the store's holder and is logged.

Requests that must not move the link (CHECK) or need no subnet.env (DEL, GC) use
whatever `<dataDir>/<name>` is (the symlink, a legacy directory, or nothing); DEL that
finds nothing there looks through the other stores (the node's lease changed since ADD
and the link was moved).
"""
from __future__ import annotations

import errno
import fcntl
import ipaddress
import logging
import os
import shutil
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from conf.errors import IOFailureError
from conf.flannel import ensure_dir
from ipam.allocator import Range
from ipam.disk_store import DiskStore
from ipam.store import IPAddr, Reservation

log = logging.getLogger("flannelette")

SUBNETS_DIR = ".subnets"
OWNERS_DIR = "owners"
MIGRATION_LOCK = ".lock"


def store_key(range_sets: Sequence[Sequence[Range]]) -> str:
    nets = sorted({r.subnet for rs in range_sets for r in rs}, key=lambda n: (n.version, n))
    return ",".join(str(n).replace("/", "_") for n in nets)


def _key_networks(key: str) -> list[ipaddress._BaseNetwork]:
    return [ipaddress.ip_network(part.replace("_", "/")) for part in key.split(",") if part]


class SharedStore(DiskStore):
    """A DiskStore reached as `<dataDir>/<network>` that records which network reserved what."""

    def __init__(self, data_dir: str, network: str):
        super().__init__(data_dir, network)
        self.network = network
        self._every_network = False

    def _reclaim_earlier_boot(self) -> None:
        self._every_network = True  # a reboot frees every network's reservations, not only ours
        try:
            super()._reclaim_earlier_boot()
        finally:
            self._every_network = False

    def _marker(self, network: str, ip: IPAddr) -> str:
        return os.path.join(self.dir, OWNERS_DIR, network, str(ip))

    def reserve(self, container_id: str, ifname: str, ip: IPAddr, range_id: int) -> bool:
        # The marker goes first: a crash in between leaves a marker without a reservation
        # (removed by GC), never a reservation that every network's GC would consider.
        marker = self._marker(self.network, ip)
        had_marker = os.path.lexists(marker)
        if not had_marker:
            ensure_dir(os.path.dirname(marker))
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        if super().reserve(container_id, ifname, ip, range_id):
            return True
        if not had_marker:
            os.unlink(marker)
        return False

    def release(self, ip: IPAddr) -> None:
        # Markers first: a crash in between leaves an unmarked reservation, which the
        # retried DEL (or any GC) still frees, never a marker nobody would remove.
        for network in self._owner_networks():
            try:
                os.unlink(self._marker(network, ip))
            except FileNotFoundError:
                pass
        super().release(ip)

    def list_all(self) -> list[Reservation]:
        """This network's reservations and unmarked ones: what GC of this network may free."""
        if self._every_network:
            return super().list_all()
        others = set()
        for network in self._owner_networks():
            if network != self.network:
                others.update(self._marked(network))
        mine = self._marked(self.network)
        for ip in mine - {r.ip for r in super().list_all()}:  # marker of a crashed reserve
            os.unlink(self._marker(self.network, ip))
        return [r for r in super().list_all() if r.ip in mine or r.ip not in others]

    def _owner_networks(self) -> list[str]:
        try:
            return os.listdir(os.path.join(self.dir, OWNERS_DIR))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _marked(self, network: str) -> set[IPAddr]:
        out = set()
        try:
            names = os.listdir(os.path.join(self.dir, OWNERS_DIR, network))
        except FileNotFoundError:
            return out
        for name in names:
            try:
                out.add(ipaddress.ip_address(name))
            except ValueError:
                continue
        return out


# ---------------------------------------------------------------- the links


def open_store(data_dir: str, network: str,
               range_sets: Optional[Sequence[Sequence[Range]]] = None) -> SharedStore:
    """The store `network` allocates from. With `range_sets` (ADD, CHECK) the by-name link is
    made or moved to the store of those subnets first; without, it is used as it is."""
    if range_sets:
        ensure_store_link(data_dir, network, store_key(range_sets))
    return SharedStore(data_dir, network)


def other_stores(data_dir: str, network: str) -> list[SharedStore]:
    """Every subnet store except the one `<dataDir>/<network>` leads to (for DEL's search)."""
    root = os.path.join(data_dir, SUBNETS_DIR)
    try:
        current = os.path.realpath(os.path.join(data_dir, network))
        keys = sorted(k for k in os.listdir(root) if not k.startswith("."))
    except FileNotFoundError:
        return []
    stores = []
    for key in keys:
        if os.path.realpath(os.path.join(root, key)) != current:
            store = SharedStore(root, key)
            store.network = network
            stores.append(store)
    return stores


def ensure_store_link(data_dir: str, network: str, key: str) -> None:
    link, target = os.path.join(data_dir, network), os.path.join(SUBNETS_DIR, key)
    if _link_target(link) == target:
        return  # the common case: one readlink
    try:
        with _migration_lock(data_dir):
            ensure_dir(os.path.join(data_dir, target))
            for _attempt in range(3):
                if _link_target(link) == target:
                    return
                for name in _legacy_dirs_to_adopt(data_dir, network, key):
                    _adopt(data_dir, name, key)
                    _point(data_dir, name, target)
                if not os.path.isdir(link) or os.path.islink(link):
                    _point(data_dir, network, target)
    except OSError as e:
        raise IOFailureError(f"IPAM store {link}: {e.strerror or e}") from None


@contextmanager
def _migration_lock(data_dir: str) -> Iterator[None]:
    root = os.path.join(data_dir, SUBNETS_DIR)
    ensure_dir(root)
    fd = os.open(os.path.join(root, MIGRATION_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _link_target(path: str) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _point(data_dir: str, name: str, target: str) -> None:
    """`<dataDir>/<name>` -> target, replacing an older link atomically."""
    tmp = os.path.join(data_dir, f".{name}.link")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    try:
        os.rename(tmp, os.path.join(data_dir, name))
    except OSError as e:  # a real directory appeared meanwhile: adopt it on the next round
        os.unlink(tmp)
        if e.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise


def _legacy_dirs_to_adopt(data_dir: str, network: str, key: str) -> list[str]:
    """`network`'s own legacy directory and every other one holding an address of `key`."""
    subnets = _key_networks(key)
    out = []
    for name in sorted(os.listdir(data_dir)):
        path = os.path.join(data_dir, name)
        if name.startswith(".") or os.path.islink(path) or not os.path.isdir(path):
            continue
        if name == network or any(ip in net for ip in _ips_in(path) for net in subnets
                                  if ip.version == net.version):
            out.append(name)
    return out


def _ips_in(path: str) -> list[IPAddr]:
    out = []
    for name in os.listdir(path):
        try:
            out.append(ipaddress.ip_address(name))
        except ValueError:
            continue
    return out


def _adopt(data_dir: str, name: str, key: str) -> None:
    """Move a legacy `<dataDir>/<name>/` into the store `key`, then remove it."""
    legacy = DiskStore(data_dir, name)
    store = SharedStore(os.path.join(data_dir, SUBNETS_DIR), key)
    store.network = name
    with legacy.locked(), store.locked():
        for ip in _ips_in(legacy.dir):
            marker = store._marker(name, ip)
            ensure_dir(os.path.dirname(marker))
            held = legacy._read(ip)
            if not os.path.lexists(store._path(ip)):
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
                os.rename(legacy._path(ip), store._path(ip))
                continue
            have = store._read(ip)
            if (have.container_id, have.ifname) == (held.container_id, held.ifname):
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            else:
                log.warning("IPAM store %s: %s was held twice, by %s/%s there and by %s/%s in the old "
                            "store of network %s; it stays with the first", store.dir, ip,
                            have.container_id, have.ifname, held.container_id, held.ifname, name)
        shutil.rmtree(legacy.dir)  # the lock fd stays valid until `locked` closes it
