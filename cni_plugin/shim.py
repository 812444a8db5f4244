"""The `flannelette` executable a runtime runs: a lean shim in front of the node daemon.

Every CNI call pays for interpreter start-up plus its imports, so this module imports only
C-level stdlib modules (sys, posix, _socket, _json): `json`, `socket` or `os` would add
10-20 ms per call, pyroute2 and pydantic 150-250 ms (docs/performance.md#the-lean-shim).
It forwards the request (CNI_* env, stdin, an open fd of CNI_NETNS over SCM_RIGHTS) to the
daemon socket named by the config's `daemonSocket` and prints the reply. When the daemon
cannot be reached, or the config is too broken to tell where it is, the same handlers run
in-process (slow but identical). `flannelette status` shows the node's leases;
`flannelette doctor` is handed to the daemon's executable (daemon/doctor/).
In the frozen build packaging/launcher.c runs this module as `flannelette_shim`, but only
after it found that a request is not a plain one it forwards itself in C (the same bytes,
the same answers: tests/packaging/test_launcher_fast_path.py); a change here goes there too.

Wire format (daemon/fastpath/server.py is the other end):
  request = b"FLT1" + op(1) + len(env)(4, big-endian) + len(stdin)(4) + env + stdin
            env is b"KEY=VALUE\\0" per CNI_* variable; the netns fd rides on the first byte.
  reply   = exit status(1) + len(stdout)(4) + stdout; exit status 255 means "refused, run it
            yourself" (the peer is not root).
"""
import sys
import posix
import _json
import _socket

DEFAULT_SOCKET = "/run/flannelette/cni.sock"
MAX_STDIN = 1 << 20  # conf.cni.MAX_STDIN: one byte more is enough to report "too big"
MAX_ENV = 1 << 16  # daemon/fastpath/server.py's: a bigger env is hung up on, so it runs in-process
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")  # conf.cni's; a test checks
MAGIC = b"FLT1"
OP_CNI = b"C"
OP_STATUS = b"S"
REFUSED = 255


class _ScanContext:
    """What _json.make_scanner reads off a JSONDecoder: json.loads' defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads accepts them


_scan = _json.make_scanner(_ScanContext)


def _skip_ws(text, i):
    n = len(text)
    while i < n and text[i] in " \t\n\r":
        i += 1
    return i


def parse_json(data):
    """stdin bytes -> a dict as json.loads would give, or None when anything is off."""
    try:
        text = data.decode()
        obj, end = _scan(text, _skip_ws(text, 0))
    except Exception:  # the in-process path produces the precise error
        return None
    if _skip_ws(text, end) != len(text) or type(obj) is not dict:
        return None
    return obj


def read_stdin():
    chunks = []
    total = 0
    try:
        while total <= MAX_STDIN:
            chunk = posix.read(0, MAX_STDIN + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError:  # no stdin at all: the config decoder reports it
        pass
    return b"".join(chunks)


def cni_environ():
    return b"".join(k + b"=" + v + b"\0" for k, v in posix.environ.items() if k[:4] == b"CNI_")


def encode_request(op, env, stdin):
    return MAGIC + op + len(env).to_bytes(4, "big") + len(stdin).to_bytes(4, "big") + env + stdin


def _open_netns():
    path = posix.environ.get(b"CNI_NETNS")
    if not path:
        return -1
    try:
        return posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:  # vanished or unreadable: the handlers report (or tolerate, for DEL) it
        return -1


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def exchange(path, request, fd=-1):
    """Send one request; (status, payload), or None when the daemon cannot take it
    (absent, refusing, or gone before it had the whole request). Raises ConnectionError
    when the daemon vanished after the whole request was sent (it may have acted on it)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(path)
            rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))] if fd >= 0 else []
            sent = sock.sendmsg([request], rights, _socket.MSG_NOSIGNAL)
            if sent < len(request):
                sock.sendall(request[sent:], _socket.MSG_NOSIGNAL)
        except OSError:
            return None
        head = _recv_exact(sock, 5)
        if head is None:
            raise ConnectionError("the daemon closed the connection before replying")
        status = head[0]
        if status == REFUSED:
            return None
        payload = _recv_exact(sock, int.from_bytes(head[1:], "big"))
        if payload is None:
            raise ConnectionError("the daemon's reply was cut short")
        return status, payload
    finally:
        sock.close()


def _json_str(s):
    return _json.encode_basestring_ascii(s)


def version_reply(config):
    """The VERSION answer, byte for byte what conf.dispatch gives."""
    version = config.get("cniVersion")
    if type(version) is not str or not version:
        version = SUPPORTED_VERSIONS[-1]
    listed = ",".join(_json_str(v) for v in SUPPORTED_VERSIONS)
    return ('{"cniVersion":%s,"supportedVersions":[%s]}\n' % (_json_str(version), listed)).encode()


def error_reply(config, code, msg):
    version = config.get("cniVersion")
    if type(version) is not str or not version:
        version = SUPPORTED_VERSIONS[-1]
    return ('{"cniVersion":%s,"code":%d,"msg":%s}\n' % (_json_str(version), code, _json_str(msg))).encode()


def write_out(data):
    view = memoryview(data)
    while view:
        view = view[posix.write(1, view):]


def _full_stack():
    """Frozen build: `flannelette-full` next to this executable (packaging/flannelette.spec)
    holds the in-process stack, json and argparse that this lean one leaves out."""
    return sys.executable.rpartition("/")[0] + "/flannelette-full"


def _exec_full_stack(stdin):
    """Hand the request to the full stack; stdin goes over in a memfd."""
    fd = posix.memfd_create("flannelette-stdin", 0)
    view = memoryview(stdin)
    while view:
        view = view[posix.write(fd, view):]
    posix.lseek(fd, 0, 0)
    posix.dup2(fd, 0)
    posix.close(fd)
    posix.execv(_full_stack(), [sys.argv[0]])


def _exec_doctor(args):
    """`flannelette doctor` runs in the daemon's stack (it reads etcd, which the CNI
    executables leave out): `flanneletted doctor` of the frozen build, next to this one;
    in the script form `python -m daemon.doctor` on this interpreter's path."""
    if getattr(sys, "frozen", False):
        exe = sys.executable.rpartition("/")[0] + "/flanneletted"
        posix.execv(exe, [exe, "doctor", *args])
    env = dict(posix.environ)
    env[b"PYTHONPATH"] = ":".join(sys.path).encode()
    posix.execve(sys.executable, [sys.executable, "-m", "daemon.doctor", *args], env)


def run_in_process(stdin, fd=-1):
    """The slow path: the same handlers, in this process. Does not return."""
    if fd >= 0:
        posix.close(fd)  # the handlers open CNI_NETNS themselves, as the daemon cannot here
    try:
        if getattr(sys, "frozen", False):
            _exec_full_stack(stdin)
        import os
        from cni_plugin import main as inproc
        import cni_plugin.handlers  # noqa: F401  (imported here so a broken install is reported)
    except Exception as e:  # a broken install: say so as a CNI error, not a traceback
        config = parse_json(stdin) or {}
        write_out(error_reply(config, 999, "flannelette cannot load its in-process plugin stack: %s: %s"
                              % (type(e).__name__, e)))
        sys.exit(1)
    inproc.setup_stderr_logging(inproc.PROG)
    status, out = inproc.serve(dict(os.environ), stdin)
    write_out(out)
    sys.exit(status)  # a normal exit, so the in-process stack can flush its logs


def run_cni():
    stdin = read_stdin()
    if len(stdin) > MAX_STDIN:  # refused before parsing or touching anything, as conf.cni does
        write_out(error_reply({}, 6, "network configuration on stdin is over the %d-byte limit" % MAX_STDIN))
        return 1
    config = parse_json(stdin) if stdin.strip() else {}
    if config is None:
        return run_in_process(stdin)
    if posix.environ.get(b"CNI_COMMAND") == b"VERSION":
        write_out(version_reply(config))
        return 0
    path = config.get("daemonSocket", DEFAULT_SOCKET)
    if type(path) is not str or not path:  # "" disables the fast path; a bad type is reported there
        return run_in_process(stdin)
    env = cni_environ()
    if len(env) > MAX_ENV:  # a hostile CNI_* value: the in-process path names it
        return run_in_process(stdin)
    fd = _open_netns()
    try:
        reply = exchange(path, encode_request(OP_CNI, env, stdin), fd)
    except ConnectionError as e:
        write_out(error_reply(config, 11, "the flannelette daemon went away mid-request (%s); "
                                          "retry the operation" % e.args[0]))
        return 1
    except OSError:
        reply = None
    if reply is None:
        return run_in_process(stdin, fd)
    if fd >= 0:
        posix.close(fd)
    write_out(reply[1])
    return reply[0]


def main():
    argv = sys.argv
    if argv[0].rpartition("/")[2] == "flannelette-ipam":  # the script form: one stub, both names
        from ipam.main import main as ipam_main
        return ipam_main()
    if len(argv) > 1 and argv[1] == "status":  # json/argparse, no plugin stack
        if getattr(sys, "frozen", False):
            posix.execv(_full_stack(), argv)
        from cni_plugin.status import main as status_main
        sys.exit(status_main(argv[2:]))
    if len(argv) > 1 and argv[1] == "doctor":  # etcd and the daemon's readers: its executable
        return _exec_doctor(argv[2:])
    status = run_cni()
    posix._exit(status)  # everything went out through posix.write: skip interpreter teardown


if __name__ == "__main__":
    main()
