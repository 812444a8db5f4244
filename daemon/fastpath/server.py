"""The CNI fast path, daemon side: runs CNI requests from the lean shim warm.

The shim (cni_plugin/shim.py, which documents the wire format; in the frozen build the launcher,
packaging/launcher.c, for plain requests) passes the CNI_* env, the
stdin bytes and an open fd of the pod netns; a worker thread runs them through
conf.dispatch.run with the same handlers the in-process path uses, and replies with the
exit status and stdout. Threads, not asyncio: the handlers block on netlink and do
per-thread setns, and an accept thread plus a pool costs nothing measurable
(docs/performance.md#worker-threads-not-asyncio).

Safety: the socket's directory is 0700 and ours, the socket 0600; the peer must also be
uid 0 (SO_PEERCRED; or the daemon's own uid, which can do no more than the daemon), otherwise
it is told to run the request itself. A directory we do not own, or a symlink or other file
where the directory should be, is refused (never followed, changed or removed): the daemon
runs on without the fast path and the plugin runs requests itself. A request whose client is
killed mid-way still runs to its end (the handlers roll back on failure), and requests
for the same container are serialised, so a retried ADD waits for the first one and then
gets the same address.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from cni_plugin.shim import MAGIC, OP_CNI, OP_STATUS, REFUSED
from conf import dispatch, steps
from conf.cni import MAX_STDIN
from conf.flannel import ensure_dir

log = logging.getLogger("flannelette.cni_server")

HEADER = struct.Struct(">4scII")  # the shim's encode_request: magic, op, len(env), len(stdin)
MAX_ENV = 1 << 16
MAX_FDS = 4  # the shim sends one; take a few so extra ones are closed rather than leaked
READ_TIMEOUT = 10.0  # a client that stalls mid-request loses its worker after this

NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace it is
CLONE_NEWNET = 0x40000000
StatusProvider = Callable[[], dict]


class ProtocolError(Exception):
    pass


class UnsafeSocketDirError(Exception):
    """The socket's directory is not one only we control."""


def ensure_private_dir(directory: str) -> int:
    """An fd of `directory`, made if missing, ours and 0700 whatever it was before."""
    ensure_dir(os.path.dirname(directory) or ".")
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    try:  # O_NOFOLLOW: a symlink planted here is never followed
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        what = "a symlink" if os.path.islink(directory) else f"not a directory ({e.strerror})"
        raise UnsafeSocketDirError(f"refusing to serve the CNI socket in {directory}: it is {what}; "
                                   "remove it and restart") from None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise UnsafeSocketDirError(f"refusing to serve the CNI socket in {directory}: it belongs to "
                                   f"uid {st.st_uid}, not to us (uid {os.geteuid()}); remove it and restart")
    if st.st_mode & 0o777 != 0o700:
        log.warning("tightening %s from mode %o to 0700", directory, st.st_mode & 0o777)
        os.fchmod(fd, 0o700)
    return fd


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}  # key -> [lock, users]

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ProtocolError(f"client went away with {left} of {n} bytes unsent")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _received_fds(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    return fds


def read_request(conn: socket.socket) -> tuple[bytes, dict[str, str], bytes, Optional[int]]:
    """(op, env, stdin, netns fd or None); the caller owns the fd."""
    head, ancdata, _flags, _addr = conn.recvmsg(HEADER.size, socket.CMSG_SPACE(MAX_FDS * 4))
    fds = _received_fds(ancdata)
    try:
        head += _recv_exact(conn, HEADER.size - len(head)) if len(head) < HEADER.size else b""
        magic, op, env_len, stdin_len = HEADER.unpack(head)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic {magic!r}")
        if env_len > MAX_ENV or stdin_len > MAX_STDIN + 1:
            raise ProtocolError(f"request too large (env {env_len}, stdin {stdin_len} bytes)")
        env_raw = _recv_exact(conn, env_len)
        stdin = _recv_exact(conn, stdin_len)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for extra in fds[1:]:
        os.close(extra)
    env = {}
    for item in env_raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.startswith(b"CNI_"):
            env[os.fsdecode(key)] = os.fsdecode(value)
    return op, env, stdin, (fds[0] if fds else None)


def netns_fd_or_none(fd: Optional[int]) -> Optional[int]:
    """The passed fd if it is a network namespace; else close it and let the handlers open
    CNI_NETNS themselves, so a bad path gets the very error the in-process path gives."""
    if fd is None:
        return None
    try:
        if fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def encode_reply(status: int, payload: bytes) -> bytes:
    return bytes([status]) + len(payload).to_bytes(4, "big") + payload


class CniServer:
    """Serves the fast-path socket. start() returns once the socket accepts connections."""

    def __init__(self, socket_path: str, handlers: dict, status_provider: Optional[StatusProvider] = None,
                 workers: int = 8, step_times: bool = False):
        self.socket_path = socket_path
        # With step_times, each CNI request's named steps (conf/steps.py), kept for the benchmark.
        self.step_records: Optional[list[dict]] = [] if step_times else None
        self.handlers = handlers
        self.status_provider = status_provider
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni-worker")
        self._containers = _KeyedLocks()
        self._listener: Optional[socket.socket] = None
        self._acceptor: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        directory, name = os.path.split(os.path.abspath(self.socket_path))
        dir_fd = ensure_private_dir(directory)
        try:
            self._inode = self._bind(dir_fd, name)
        finally:
            os.close(dir_fd)
        self._acceptor = threading.Thread(target=self._accept_loop, name="cni-accept", daemon=True)
        self._acceptor.start()
        log.info("CNI fast path listening on %s", self.socket_path)

    def _bind(self, dir_fd: int, name: str) -> int:
        """Bind under a temporary name and rename: the path appears only once it listens,
        and a stale socket from a crashed daemon is replaced in one step. Every step goes
        through the checked directory's fd, so a directory swapped meanwhile is not used."""
        staging = f"{name}.{os.getpid()}.tmp"
        _unlink_if_there(staging, dir_fd)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(f"/proc/self/fd/{dir_fd}/{staging}")
            os.chmod(staging, 0o600, dir_fd=dir_fd)
            listener.listen(128)
            os.rename(staging, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            listener.close()
            _unlink_if_there(staging, dir_fd)
            raise
        self._listener = listener
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino

    def stop(self) -> None:
        """Stop accepting, let running requests finish, remove the socket if still ours."""
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
            except OSError:
                pass
            if self._acceptor is not None:
                self._acceptor.join(timeout=5)
            self._listener.close()
            self._listener = None
            try:
                if os.stat(self.socket_path).st_ino == self._inode:
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "CniServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.exception("accept failed")
                continue
            try:
                self._pool.submit(self._serve, conn, time.perf_counter())
            except RuntimeError:  # pool shut down under us
                conn.close()
                return

    def _serve(self, conn: socket.socket, accepted: float) -> None:
        if self.step_records is not None:
            steps.start(accepted)
            steps.mark("wait for a worker")
        with conn:
            try:
                uid = peer_uid(conn)
                if uid not in (0, os.geteuid()):
                    log.warning("refusing a CNI request from uid %d: only root may use the fast path", uid)
                    self._send(conn, encode_reply(REFUSED, b""))
                    return
                conn.settimeout(READ_TIMEOUT)
                op, env, stdin, fd = read_request(conn)
                fd = netns_fd_or_none(fd)
            except (OSError, ProtocolError, struct.error) as e:
                log.warning("dropping a CNI connection: %s", e)
                steps.stop()
                return
            steps.mark("read request")
            try:
                reply = self._handle(op, env, stdin, fd)
            finally:
                if fd is not None:
                    os.close(fd)
            self._send(conn, reply)
            steps.mark("send reply")
        if self.step_records is not None:
            self.step_records.append({"command": env.get("CNI_COMMAND", ""), "container_id": env.get(
                "CNI_CONTAINERID", ""), "status": reply[0], "steps": steps.stop()})

    def _handle(self, op: bytes, env: dict[str, str], stdin: bytes, fd: Optional[int]) -> bytes:
        if op == OP_STATUS:
            return self._status_reply()
        if op != OP_CNI:
            return encode_reply(1, _error_json(4, f"unknown fast-path operation {op!r}"))
        started, cpu_started = time.perf_counter(), time.thread_time()
        with self._containers.hold(env.get("CNI_CONTAINERID", "")):
            steps.mark("wait for the container's lock")
            status, out = dispatch.run(self.handlers, env, stdin, fd)
            steps.mark("render reply")
        log.debug("served %s for container %r: exit %d in %.1f ms (%.1f ms CPU)", env.get("CNI_COMMAND"),
                  env.get("CNI_CONTAINERID"), status, (time.perf_counter() - started) * 1000,
                  (time.thread_time() - cpu_started) * 1000)
        return encode_reply(status, out)

    def _status_reply(self) -> bytes:
        if self.status_provider is None:
            return encode_reply(1, _error_json(50, "this CNI server runs without a node daemon: no lease status"))
        try:
            report = self.status_provider()
        except Exception as e:
            log.exception("status provider failed")
            return encode_reply(1, _error_json(999, f"status failed: {type(e).__name__}: {e}"))
        return encode_reply(0, json.dumps(report, default=str).encode() + b"\n")

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> None:
        try:
            conn.sendall(data, socket.MSG_NOSIGNAL)
        except OSError as e:  # the client was killed; what it asked for is done all the same
            log.info("client gone before the reply: %s", e)


def _unlink_if_there(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _error_json(code: int, msg: str) -> bytes:
    return json.dumps({"cniVersion": dispatch.LATEST, "code": code, "msg": msg}).encode() + b"\n"


def main(argv: Optional[list[str]] = None) -> int:
    """Standalone server for tests and benchmarks: the plugin's handlers, no etcd."""
    parser = argparse.ArgumentParser(prog="python -m daemon.fastpath.server", description=main.__doc__)
    parser.add_argument("--socket", required=True, help="unix socket path to serve")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--step-times", metavar="PATH",
                        help="time each request's named steps; written to PATH as JSON when the server stops")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("flannelette").setLevel(args.log_level.upper())  # not pyroute2's debug flood
    from cni_plugin.handlers import HANDLERS

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = CniServer(args.socket, HANDLERS, workers=args.workers, step_times=bool(args.step_times))
    server.start()
    try:
        stop.wait()
    finally:
        server.stop()
        if args.step_times:
            with open(args.step_times, "w") as f:
                json.dump(server.step_records, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
