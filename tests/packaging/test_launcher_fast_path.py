"""The frozen `flannelette` forwards plain requests in C (packaging/launcher.c) and hands every
other one to the shim: either way the daemon gets the bytes the Python shim sends and the
runtime gets the shim's answer. Checked against a recording fake daemon, the frozen build
beside the script form (the shim on the venv's interpreter)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import threading

import pytest

from cni_plugin import shim
from daemon.fastpath.server import CLONE_NEWNET, NS_GET_NSTYPE, read_request
from tests.support.install import installed_bin_dir

pytestmark = pytest.mark.timeout(600)  # the first call may build the frozen executables
REPLY = b'{"cniVersion":"1.0.0","from":"daemon"}\n'


class FakeDaemon:
    """Accepts connections on `path`; records (op, env, stdin, netns fd kind); replies with
    exit status 3 and REPLY, or hangs up without a reply when `hang_up` is set."""

    def __init__(self, path: str, hang_up: bool = False):
        self.path, self.hang_up, self.seen = path, hang_up, []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                op, env, stdin, fd = read_request(conn)
                kind = None
                if fd is not None:
                    kind = fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
                    os.close(fd)
                self.seen.append((op, env, stdin, kind))
                if not self.hang_up:
                    conn.sendall(bytes([3]) + len(REPLY).to_bytes(4, "big") + REPLY)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def executables(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    return {form: os.path.join(installed_bin_dir(root / form, form=form), "flannelette")
            for form in ("frozen", "script")}


def run(exe: str, stdin: bytes, netns: str = "/proc/self/ns/net", extra_env: dict | None = None):
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c1", "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "HOME": "/root", **(extra_env or {})}
    return subprocess.run([exe], input=stdin, env=env, capture_output=True, timeout=60)


def both(executables, tmp_path, stdin_for, hang_up: bool = False, **kw):
    """Run both forms against one fake daemon each; (outputs, what each daemon saw)."""
    outs, seen = {}, {}
    for form, exe in executables.items():
        path = str(tmp_path / f"{form}.sock")
        daemon = FakeDaemon(path, hang_up)
        try:
            proc = run(exe, stdin_for(path), **kw)
        finally:
            daemon.close()
        outs[form] = (proc.returncode, proc.stdout)
        seen[form] = [(op, env, stdin.replace(path.encode(), b"<sock>"), kind)
                      for op, env, stdin, kind in daemon.seen]
    return outs, seen


def test_a_plain_request_reaches_the_daemon_byte_for_byte(executables, tmp_path):
    outs, seen = both(executables, tmp_path, lambda p: json.dumps(
        {"cniVersion": "1.0.0", "name": "n", "type": "flannelette", "daemonSocket": p}).encode(),
        extra_env={"CNI_ARGS": "K8S_POD_NAME=a;IgnoreUnknown=1", "OTHER": "not sent"})
    assert outs["frozen"] == outs["script"] == (3, REPLY)
    assert seen["frozen"] == seen["script"]
    op, env, _stdin, kind = seen["frozen"][0]
    assert op == shim.OP_CNI and kind is True  # the pod netns rode along as an fd
    assert env["CNI_ARGS"] == "K8S_POD_NAME=a;IgnoreUnknown=1" and "OTHER" not in env


@pytest.mark.parametrize("config", [
    '{"cniVersion":"1.0.0","daemon\\u0053ocket":"<p>"}',  # an escaped key: json.loads reads daemonSocket
    '{"cniVersion":"1.0.0","daemonSocket":"<p>","x":NaN}',  # json.loads takes NaN
    '{"cniVersion":"1.0.0","daemonSocket":"/nowhere","daemonSocket":"<p>"}',  # the last one wins
    '{"cniVersion":"1.0.0","daemonSocket":"<p>","name":"caf\u00e9"}',  # non-ASCII
    '{"cniVersion":"1.0.0","daemonSocket":"<p>","deep":' + "[" * 80 + "]" * 80 + "}",
    ' \r\n{"cniVersion":"1.0\\u002e0","daemonSocket":"<p>"}\n',
])
def test_unusual_configs_get_the_shims_answer(executables, tmp_path, config):
    outs, seen = both(executables, tmp_path, lambda p: config.replace("<p>", p).encode())
    assert outs["frozen"] == outs["script"] == (3, REPLY)
    assert seen["frozen"] == seen["script"] and len(seen["frozen"]) == 1


@pytest.mark.parametrize("config", [
    '{"cniVersion":"1.0.0","daemonSocket":""}',
    '{"cniVersion":"1.0.0","daemonSocket":7}',
    '{"cniVersion":"1.0.0","daemonSocket":"/nowhere/cni.sock"}',
    '{"cniVersion":"1.0.0","daemonSocket":"<p>"',  # cut short
    '{"cniVersion":"1.0.0","daemonSocket":"<p>"}{}',
])
def test_what_the_daemon_cannot_take_runs_in_process_alike(executables, tmp_path, config):
    outs, seen = both(executables, tmp_path, lambda p: config.replace("<p>", p).encode())
    assert outs["frozen"] == outs["script"]
    assert outs["frozen"][0] != 0  # CHECK without prevResult, or a config error: in-process
    if "<p>" in config and config.endswith("}"):
        assert seen["frozen"] == seen["script"]


def test_a_daemon_gone_mid_request_is_reported_alike(executables, tmp_path):
    outs, seen = both(executables, tmp_path, lambda p: json.dumps(
        {"cniVersion": "0.4.0", "daemonSocket": p}).encode(), hang_up=True)
    assert outs["frozen"] == outs["script"]
    assert outs["frozen"][0] == 1 and json.loads(outs["frozen"][1])["code"] == 11
    assert len(seen["frozen"]) == len(seen["script"]) == 1  # sent once, never retried in-process


def test_a_missing_netns_sends_no_fd(executables, tmp_path):
    outs, seen = both(executables, tmp_path, lambda p: json.dumps(
        {"cniVersion": "1.0.0", "daemonSocket": p}).encode(), netns=str(tmp_path / "gone"))
    assert outs["frozen"] == outs["script"] == (3, REPLY)
    assert seen["frozen"] == seen["script"] and seen["frozen"][0][3] is None


def test_a_plain_request_starts_no_interpreter(executables, tmp_path):
    """The point of the C path: no interpreter start-up, so no `encodings` is ever opened;
    a request the shim must decide starts one."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    path, log = str(tmp_path / "d.sock"), str(tmp_path / "trace")
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c1",
           "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    daemon = FakeDaemon(path)
    try:
        for daemon_socket, interpreter in ((path, False), ("", True)):
            stdin = json.dumps({"cniVersion": "1.0.0", "daemonSocket": daemon_socket}).encode()
            subprocess.run([strace, "-f", "-e", "trace=openat", "-o", log, executables["frozen"]], input=stdin,
                           env=env, capture_output=True, timeout=60)
            with open(log) as f:
                assert ("encodings" in f.read()) == interpreter
    finally:
        daemon.close()
    assert len(daemon.seen) == 1
