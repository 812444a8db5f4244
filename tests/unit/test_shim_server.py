"""daemon/fastpath/server.py and `flannelette status`, with fake handlers (no root needed)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from cni_plugin import shim, status
from daemon.fastpath.server import CniServer, ProtocolError, read_request
from tests.unit.test_shim import STUB

pytestmark = pytest.mark.timeout(60)
CONF = b'{"cniVersion":"1.0.0","name":"n","type":"flannelette"}'


def cni_request(cid: str, command: str = "ADD") -> bytes:
    env = f"CNI_COMMAND={command}\0CNI_CONTAINERID={cid}\0CNI_NETNS=/x\0CNI_IFNAME=eth0\0".encode()
    return shim.encode_request(shim.OP_CNI, env, CONF)


def test_socket_is_private_and_removed_on_stop(tmp_path):
    path = tmp_path / "run" / "cni.sock"
    os.makedirs(path.parent, mode=0o755)
    with CniServer(str(path), {}):
        assert os.stat(path.parent).st_mode & 0o777 == 0o700
        assert os.stat(path).st_mode & 0o777 == 0o600
    assert not path.exists()


def test_a_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "cni.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # a crashed daemon's leftover: connecting to it is refused
    with CniServer(path, {"ADD": lambda req: {"cniVersion": req.version, "ok": True}}):
        assert shim.exchange(path, cni_request("c1")) == (0, b'{"cniVersion":"1.0.0","ok":true}\n')


def test_requests_for_one_container_run_one_at_a_time(tmp_path):
    """A retried ADD must wait for the first one (killed client) instead of racing it."""
    release = threading.Event()
    entered = []
    inside = threading.Semaphore(0)

    def add(req):
        entered.append(req.env.container_id)
        inside.release()
        release.wait(10)
        return None
    path = str(tmp_path / "cni.sock")
    with CniServer(path, {"ADD": add}, workers=4):
        clients = [threading.Thread(target=shim.exchange, args=(path, cni_request(cid)))
                   for cid in ("same", "same", "other")]
        for c in clients:
            c.start()
        assert inside.acquire(timeout=10) and inside.acquire(timeout=10)
        assert not inside.acquire(timeout=0.5)  # the second "same" is held back
        assert sorted(entered) == ["other", "same"]
        release.set()
        for c in clients:
            c.join(10)
        assert sorted(entered) == ["other", "same", "same"]


def test_a_client_gone_mid_request_does_not_stop_the_handler(tmp_path):
    done = threading.Event()
    started = threading.Event()

    def add(req):
        started.set()
        release.wait(10)
        done.set()
        return {"cniVersion": req.version}
    release = threading.Event()
    path = str(tmp_path / "cni.sock")
    with CniServer(path, {"ADD": add}):
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        client.sendall(cni_request("gone"))
        assert started.wait(10)
        client.close()  # like a SIGKILLed shim
        release.set()
        assert done.wait(10)


def test_malformed_requests_are_dropped(tmp_path):
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"XXXX" + b"C" + (0).to_bytes(4, "big") * 2)
        with pytest.raises(ProtocolError):
            read_request(b)
    a, b = socket.socketpair()
    with a, b:
        a.sendall(shim.encode_request(shim.OP_CNI, b"", b"{}")[:-1])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError):
            read_request(b)


REPORT = {
    "node": {"subnet": "10.244.1.0/24", "publicIP": "192.0.2.11", "backend": "vxlan",
             "vtepMAC": "aa:bb:cc:00:00:01", "expires": 1000 + 86400, "programmed": False},
    "network": "10.244.0.0/16",
    "leases": [
        {"subnet": "10.244.1.0/24", "publicIP": "192.0.2.11", "backend": "vxlan",
         "vtepMAC": "aa:bb:cc:00:00:01", "expires": 1000 + 86400, "programmed": False},
        {"subnet": "10.244.2.0/24", "publicIP": "192.0.2.12", "backend": "host-gw",
         "vtepMAC": "", "expires": 0, "programmed": True, "reachable": True},
        {"subnet": "10.244.3.0/24", "publicIP": "192.0.2.13", "backend": "vxlan",
         "vtepMAC": "aa:bb:cc:00:00:03", "expires": 999, "programmed": True, "reachable": False},
    ],
}


def test_status_report_renders_every_lease():
    text = status.render_report(REPORT, now=1000)
    assert text.splitlines()[0] == ("this node: subnet 10.244.1.0/24, public IP 192.0.2.11, backend vxlan, "
                                    "VTEP MAC aa:bb:cc:00:00:01, lease expires in 24h00m")
    rows = [line.split() for line in text.splitlines()[3:]]
    assert rows[0] == ["SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "EXPIRES", "PROGRAMMED", "REACHABLE"]
    assert rows[1:] == [["10.244.1.0/24", "192.0.2.11", "vxlan", "aa:bb:cc:00:00:01", "in", "24h00m", "no", "-"],
                        ["10.244.2.0/24", "192.0.2.12", "host-gw", "-", "never", "yes", "yes"],
                        ["10.244.3.0/24", "192.0.2.13", "vxlan", "aa:bb:cc:00:00:03", "expired", "yes", "NO"]]


def test_status_command_asks_the_daemon(tmp_path):
    path = str(tmp_path / "cni.sock")
    with CniServer(path, {}, status_provider=lambda: REPORT):
        out = subprocess.run([sys.executable, "-I", "-S", "-c", STUB, "status", "--socket", path, "--json"],
                             capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == REPORT


def test_status_command_explains_a_missing_daemon(tmp_path):
    out = subprocess.run([sys.executable, "-I", "-S", "-c", STUB, "status", "--socket", str(tmp_path / "no.sock")],
                         capture_output=True, timeout=30)
    assert out.returncode == 1 and not out.stdout
    assert b"no flannelette daemon answers on" in out.stderr


def test_lease_entry_from_a_lease():
    from conf.flannel import load_lease
    lease = load_lease("10.244.5.0-24", '{"PublicIP":"192.0.2.5","BackendType":"vxlan",'
                                        '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}', 1234.0)
    assert status.lease_entry(lease, programmed=True) == {
        "subnet": "10.244.5.0/24", "ipv6Subnet": None, "publicIP": "192.0.2.5", "backend": "vxlan",
        "vtepMAC": "aa:bb:cc:dd:ee:ff", "expires": 1234.0, "programmed": True}
