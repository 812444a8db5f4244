"""Least privilege, checked without a cluster.

- no shell ever runs a command we build: a scan of every source for shell=True, os.system
  and friends, and for commands built as strings; a hostile plugin name reaches exec as
  one argv entry;
- the fast-path socket's directory is ours and 0700 whatever was there before (one owned by
  another user: tests/netns/test_socket_dir_owner.py, as only root can make one);
- files and directories we create are not world-writable under a umask of 000.
"""
from __future__ import annotations

import ast
import os
import socket
import stat
import sys
from pathlib import Path

import pytest

from cni_plugin.ipam_client import call_ipam
from cni_plugin.state import AttachmentState, save_state
from conf.cni import RuntimeEnv
from conf.errors import CniError
from conf.flannel import SubnetEnv, write_subnet_env
from conf.plugin import IpamRange
from daemon.fastpath.server import CniServer, UnsafeSocketDirError
from ipam.allocator import Allocator, make_range_sets
from ipam.disk_store import DiskStore
from tests.support.cni import world_writable

ROOT = Path(__file__).resolve().parent.parent.parent
SOURCES = ("conf", "ipam", "cni_plugin", "daemon", "packaging")
SHELL_CALLS = {"system", "popen", "getoutput", "getstatusoutput", "spawnl", "spawnlp", "spawnv", "spawnvp"}
RUNNERS = {"run", "Popen", "call", "check_call", "check_output", "execv", "execvp", "execve", "execvpe"}
BUILT_STRINGS = (ast.Constant, ast.JoinedStr, ast.BinOp)


def _python_sources():
    for top in SOURCES:
        yield from sorted((ROOT / top).rglob("*.py"))


def _shell_uses(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(f"{where} passes shell=")
        if name in SHELL_CALLS and getattr(node.func, "value", None) is not None \
                and getattr(node.func.value, "id", "") in ("os", "subprocess", "commands"):
            found.append(f"{where} calls {node.func.value.id}.{name}")
        first = node.args[0] if node.args else None
        if name in RUNNERS and isinstance(first, BUILT_STRINGS) or (
                name in RUNNERS and isinstance(first, ast.Call) and getattr(first.func, "attr", "") == "format"):
            found.append(f"{where} runs a command given as one string")
    return found


def test_no_command_goes_through_a_shell_or_is_built_as_a_string():
    scanned = list(_python_sources())
    assert len(scanned) > 40, "the scan found too few sources to mean anything"
    assert [f for path in scanned for f in _shell_uses(path)] == []


def test_the_scan_would_catch_each_kind(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os, subprocess\nsubprocess.run('iptables -A ' + x, shell=True)\n"
                   "os.system('ip link')\nsubprocess.Popen(f'iptables {rule}')\n"
                   "subprocess.run('ip {}'.format(a))\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = _shell_uses(bad)
    finally:
        ROOT = saved
    assert len(found) == 5, found


def test_a_hostile_ipam_type_reaches_exec_as_one_argv_entry(tmp_path):
    """ipam.type names an executable in CNI_PATH; shell syntax in it stays a file name."""
    hostile = "x;touch pwned $(touch pwned2) `touch pwned3`"
    plugin = tmp_path / hostile
    argv_log = tmp_path / "argv"
    plugin.write_text(f"#!{sys.executable}\nimport sys\nopen({str(argv_log)!r}, 'w').write(repr(sys.argv))\n"
                      "print('{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"no\"}'); sys.exit(1)\n")
    plugin.chmod(0o755)
    env = RuntimeEnv(command="ADD", container_id="c1", netns="/x", ifname="eth0", path=[str(tmp_path)])
    raw = {"cniVersion": "1.0.0", "name": "n", "type": "flannelette", "ipam": {"type": hostile}}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # where a shell would have created the files
    try:
        with pytest.raises(CniError, match="no"):
            call_ipam(env, "ADD", raw)
    finally:
        os.chdir(cwd)
    assert ast.literal_eval(argv_log.read_text()) == [str(plugin)]
    assert sorted(os.listdir(tmp_path)) == ["argv", hostile]


# ---------------------------------------------------------------- the fast-path socket


def _serve_once(path: str) -> CniServer:
    server = CniServer(path, {})
    server.start()
    return server


def test_a_looser_socket_directory_is_tightened(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    directory.chmod(0o777)
    server = _serve_once(str(directory / "cni.sock"))
    try:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE((directory / "cni.sock").lstat().st_mode) == 0o600
        assert stat.S_ISSOCK((directory / "cni.sock").lstat().st_mode)
    finally:
        server.stop()


@pytest.mark.parametrize("planted", ["symlink to a directory", "dangling symlink", "regular file"])
def test_something_planted_where_the_directory_goes_is_refused_and_left_alone(tmp_path, planted):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    directory = tmp_path / "run"
    if planted == "symlink to a directory":
        directory.symlink_to(target)
    elif planted == "dangling symlink":
        directory.symlink_to(tmp_path / "nothing")
    else:
        directory.write_text("not a directory")
    with pytest.raises(UnsafeSocketDirError, match=f"refusing to serve the CNI socket in {directory}"):
        _serve_once(str(directory / "cni.sock"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o755  # never chmod()ed through the link
    assert os.listdir(target) == [] and not (tmp_path / "nothing").exists()
    assert directory.is_symlink() or directory.read_text() == "not a directory"


# ---------------------------------------------------------------- umask 000


@pytest.fixture
def umask_000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_files_and_directories_we_create_are_not_world_writable_under_umask_000(tmp_path, umask_000):
    # IPAM store (and its parents), plugin state, subnet.env, the socket's directory.
    store = DiskStore(str(tmp_path / "var/lib/cni/networks"), "cbr0")
    ranges = make_range_sets([[IpamRange(subnet="10.1.0.0/24")]])
    Allocator(store, ranges).allocate("c1", "eth0")
    save_state(str(tmp_path / "var/lib/cni/flannelette"), "cbr0",
               AttachmentState(container_id="c1", ifname="eth0", host_veth="veth1", bridge="cni0"))
    write_subnet_env(str(tmp_path / "run/flannel/subnet.env"),
                     SubnetEnv(networks=["10.244.0.0/16"], subnet="10.244.1.1/24", mtu=1450, ipmasq=True))
    server = _serve_once(str(tmp_path / "run/flannelette/cni.sock"))
    try:
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(tmp_path / "run/flannelette/cni.sock"))
        probe.close()
        created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
        assert "var/lib/cni/networks/cbr0/10.1.0.2" in created and "run/flannel/subnet.env" in created
        assert world_writable(str(tmp_path)) == []
        assert stat.S_IMODE((tmp_path / "run/flannelette").stat().st_mode) == 0o700
    finally:
        server.stop()


def test_the_vtep_mac_file_and_state_dir_are_not_world_writable_under_umask_000(tmp_path, umask_000):
    from daemon.dataplane.backends.vxlan import stable_mac

    mac = stable_mac(str(tmp_path / "var/lib/flanneletted/state"), "flannel.1", "192.0.2.7")
    assert (tmp_path / "var/lib/flanneletted/state/flannel.1.mac").read_text().strip() == mac
    assert world_writable(str(tmp_path)) == []
