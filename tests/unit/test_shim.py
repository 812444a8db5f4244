"""The lean shim (cni_plugin/shim.py) against a real CniServer with fake handlers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import threading

import pytest

from cni_plugin import shim
from conf import dispatch
from conf.cni import SUPPORTED_VERSIONS
from conf.errors import InvalidConfigError
from daemon.fastpath.server import CniServer, read_request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATHS = [ROOT, sysconfig.get_paths()["purelib"]]
STUB = (f"import sys; sys.path[:0] = {PATHS!r}; sys.argv[0] = 'flannelette'; "
        "from cni_plugin.shim import main; main()")
# What the shim may add to a bare `python -I -S`: C modules, itself and its package
# (whose __init__ may use `from __future__ import annotations`: a module of constants).
ALLOWED = {"cni_plugin", "cni_plugin.shim", "_json", "_socket", "__future__"}

pytestmark = pytest.mark.timeout(60)


def run_shim(env: dict, stdin: bytes, *flags: str, args: tuple = ()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-I", "-S", *flags, "-c", STUB, *args]
    return subprocess.run(cmd, input=stdin, env=env, capture_output=True, timeout=30)


def conf_bytes(sock: str, **extra) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "cbr0", "type": "flannelette",
                       "daemonSocket": sock, **extra}).encode()


def echo_add(req: dispatch.Request) -> dict:
    """Reports what reached the handler, so the test can compare it with what was sent."""
    fd_matches = (req.netns_fd is not None
                  and os.fstat(req.netns_fd).st_ino == os.stat(req.env.netns).st_ino)
    return {"cniVersion": req.version, "container": req.env.container_id, "ifname": req.env.ifname,
            "args": req.env.args, "stdinLen": len(req.stdin), "netnsFdMatches": fd_matches}


def failing_add(req: dispatch.Request) -> dict:
    raise InvalidConfigError("invalid network configuration: field 'bridge': nope")


@pytest.fixture
def server(tmp_path):
    path = str(tmp_path / "run" / "cni.sock")
    srv = CniServer(path, {"ADD": echo_add, "CHECK": failing_add})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def cni_env(tmp_path):
    # Our own netns file: a real namespace any user may open, the same one the server sees.
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/proc/self/ns/net",
            "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAME=web;IgnoreUnknown=1", "CNI_PATH": "/x"}


def imported_modules(importtime_stderr: bytes) -> set[str]:
    names = set()
    for line in importtime_stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def test_fast_path_imports_only_c_level_modules(server, cni_env):
    base = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", "-c", "pass"],
                          capture_output=True, timeout=30)
    baseline = imported_modules(base.stderr)
    proc = run_shim(cni_env, conf_bytes(server.socket_path), "-X", "importtime")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    loaded = imported_modules(proc.stderr) - baseline
    assert loaded - ALLOWED == set(), f"the shim loaded heavy modules: {sorted(loaded - ALLOWED)}"
    assert {"_socket", "cni_plugin.shim"} <= loaded


def test_fast_path_passes_env_stdin_and_the_netns_fd(server, cni_env):
    stdin = conf_bytes(server.socket_path)
    proc = run_shim(cni_env, stdin)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "cniVersion": "1.0.0", "container": "c0ffee", "ifname": "eth0",
        "args": {"K8S_POD_NAME": "web", "IgnoreUnknown": "1"}, "stdinLen": len(stdin),
        "netnsFdMatches": True}


def test_an_fd_that_is_no_netns_is_not_passed_on(server, cni_env, tmp_path):
    """The handlers then open CNI_NETNS themselves and fail as the in-process path does."""
    not_a_netns = tmp_path / "file"
    not_a_netns.write_bytes(b"")
    proc = run_shim({**cni_env, "CNI_NETNS": str(not_a_netns)}, conf_bytes(server.socket_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["netnsFdMatches"] is False


def test_error_status_and_json_come_back_unchanged(server, cni_env):
    proc = run_shim({**cni_env, "CNI_COMMAND": "CHECK"}, conf_bytes(server.socket_path))
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {"cniVersion": "1.0.0", "code": 7,
                                       "msg": "invalid network configuration: field 'bridge': nope"}


@pytest.mark.parametrize("stdin", [b"", b'{"cniVersion":"0.4.0"}', b'{"cniVersion":""}',
                                   b' {"cniVersion":"9.9.9","x":[1,2.5,null]} \n', b'[1]',
                                   b'{"cniVersion":"1.1.0"', b'{"cniVersion":"0.3.1","name":"\\u00e9"}'])
def test_version_is_answered_without_a_daemon_like_dispatch(stdin, tmp_path):
    env = {"CNI_COMMAND": "VERSION"}
    proc = run_shim(env, stdin)
    assert proc.returncode == 0
    assert proc.stdout == dispatch.run({}, env, stdin)[1]
    assert json.loads(proc.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)


def test_shim_versions_match_conf():
    assert shim.SUPPORTED_VERSIONS == SUPPORTED_VERSIONS


def test_shim_limits_match_conf_and_the_server():
    from conf.cni import MAX_STDIN
    from daemon.fastpath.server import MAX_ENV
    assert (shim.MAX_STDIN, shim.MAX_ENV) == (MAX_STDIN, MAX_ENV)


def test_an_env_too_big_for_the_server_runs_in_process(server, cni_env):
    # fuzzing: a 100k CNI_CONTAINERID made the server hang up and the shim say "retry" (11)
    env = {**cni_env, "CNI_CONTAINERID": "c" * 100_000}
    proc = run_shim(env, conf_bytes(server.socket_path))
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 4


def test_framing_round_trip_carries_the_fd(tmp_path):
    target = tmp_path / "ns"
    target.write_bytes(b"")
    env = b"CNI_COMMAND=ADD\0CNI_IFNAME=eth0\0NOT_CNI=1\0"
    stdin = b'{"cniVersion":"1.0.0"}' * 1000
    a, b = socket.socketpair()
    fd = os.open(target, os.O_RDONLY)
    try:
        sender = threading.Thread(target=lambda: a.sendmsg(
            [shim.encode_request(shim.OP_CNI, env, stdin)],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))]))
        sender.start()
        op, got_env, got_stdin, got_fd = read_request(b)
        sender.join()
        assert (op, got_env, got_stdin) == (shim.OP_CNI, {"CNI_COMMAND": "ADD", "CNI_IFNAME": "eth0"}, stdin)
        assert got_fd is not None and os.fstat(got_fd).st_ino == os.stat(target).st_ino
        os.close(got_fd)
    finally:
        os.close(fd)
        a.close()
        b.close()


def one_shot_server(path: str, reply: bytes | None) -> threading.Thread:
    """Accepts one connection, reads the request, sends `reply` (None: just hang up)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn, listener:
            read_request(conn)
            if reply is not None:
                conn.sendall(reply)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_daemon_gone_mid_request_gives_try_again(tmp_path, cni_env):
    path = str(tmp_path / "s.sock")
    t = one_shot_server(path, None)
    proc = run_shim(cni_env, conf_bytes(path))
    t.join(5)
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["code"] == 11 and err["cniVersion"] == "1.0.0" and "retry" in err["msg"]


def test_cut_short_reply_gives_try_again(tmp_path, cni_env):
    path = str(tmp_path / "s.sock")
    t = one_shot_server(path, bytes([0]) + (100).to_bytes(4, "big") + b'{"cniVersion"')
    proc = run_shim(cni_env, conf_bytes(path))
    t.join(5)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 11


# The in-process fallback runs the real plugin stack; these configs fail before any
# netlink work, so the error must be the one conf.dispatch gives.

def test_refused_request_runs_in_process(tmp_path, cni_env):
    path = str(tmp_path / "s.sock")
    t = one_shot_server(path, bytes([shim.REFUSED, 0, 0, 0, 0]))
    env = {k: v for k, v in cni_env.items() if k != "CNI_COMMAND"}
    proc = run_shim(env, conf_bytes(path))
    t.join(5)
    assert proc.returncode == 1
    assert proc.stdout == dispatch.run({}, env, conf_bytes(path))[1]
    assert json.loads(proc.stdout)["code"] == 4


@pytest.mark.parametrize("stdin,code", [(b'{"cniVersion": "1.0.0", "name": ', 6),
                                        (b'{"cniVersion": "7.0.0", "name": "x", "type": "flannelette"}', 1),
                                        (b'{"cniVersion":"1.0.0","name":"x","type":"flannelette","daemonSocket":5}', 7)])
def test_absent_socket_or_bad_config_runs_in_process(tmp_path, cni_env, stdin, code):
    stdin = stdin.replace(b'"name": "x"', b'"name": "x", "daemonSocket": "%s"' % str(tmp_path / "none.sock").encode())
    proc = run_shim(cni_env, stdin)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["code"] == code
    if code != 7:  # the pydantic message for a bad daemonSocket is the plugin's business
        assert proc.stdout == dispatch.run({}, cni_env, stdin)[1]


def test_oversized_stdin_is_refused_with_code_6(server, cni_env):
    stdin = conf_bytes(server.socket_path)[:-1] + b', "pad": "' + b"x" * (1 << 20) + b'"}'
    proc = run_shim(cni_env, stdin)
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["code"] == 6 and "1048576-byte limit" in err["msg"]
