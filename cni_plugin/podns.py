"""The pod's network namespace, entered safely from any thread.

The daemon runs these handlers on pool threads, so nothing here switches the
whole process: `setns(2)` on Linux changes only the calling thread, and a
netlink socket keeps the namespace it was created in. A pod-side netlink
socket is therefore made by switching this thread into the pod netns, opening
the socket, and switching straight back (never pyroute2's netns helpers:
pushns/popns keep a process-global stack and IPRoute(netns=) forks).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import sys
import threading
from typing import Iterator, Optional

from conf.errors import InvalidNetnsError

from cni_plugin.netlink import NetlinkSocket

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace it is

_libc = ctypes.CDLL(None, use_errno=True)
_local = threading.local()


def open_netns(path: str) -> int:
    """Open CNI_NETNS read-only; InvalidNetnsError (8) unless it is a network namespace."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InvalidNetnsError(f"CNI_NETNS {path!r} cannot be opened: {e.strerror}") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise InvalidNetnsError(f"CNI_NETNS {path!r} is not a network namespace")
    return fd


@contextlib.contextmanager
def pod_netns_fd(netns_path: str, given_fd: Optional[int]) -> Iterator[int]:
    """The fd the fast path passed (left open for its owner), else CNI_NETNS opened here."""
    if given_fd is not None:
        yield given_fd
        return
    fd = open_netns(netns_path)
    try:
        yield fd
    finally:
        os.close(fd)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netlink_in(pod_fd: int) -> NetlinkSocket:
    """A request socket bound to the pod netns; this thread stays put."""
    host_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(pod_fd)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EBADF):
                raise InvalidNetnsError("the pod netns fd is not a network namespace") from None
            raise
        try:
            return NetlinkSocket(rcvbuf=1 << 20)
        finally:
            _return_home(host_fd)
    finally:
        os.close(host_fd)


def _return_home(host_fd: int) -> None:
    try:
        _setns(host_fd)
    except OSError as e:  # a thread stuck in a pod netns would corrupt later requests
        sys.stderr.write(f"flannelette: fatal: cannot switch back to the host netns: {e}\n")
        sys.stderr.flush()
        os._exit(70)


def host_netlink() -> NetlinkSocket:
    """This thread's request socket in its own (the node's) netns, reused across calls.

    One per thread: a socket's replies must not be read by two threads at once.
    """
    sock = getattr(_local, "node_sock", None)
    if sock is None:
        sock = _local.node_sock = NetlinkSocket(rcvbuf=1 << 20)
    return sock
