"""flanneletted against an etcd that wants client certificates, and one with auth enabled.

The auth user's role grants read/write on the flannel prefix only (the etcdctl recipe is
EtcdServer.enable_auth, also in the README); wrong credentials must stop the daemon with
one clear line, not a traceback and not an endless retry.
"""
from __future__ import annotations

import os

import pytest

from tests.support.certs import make_pki
from tests.support.etcd import ETCDCTL, EtcdServer
from tests.support.flanneletted import ALLOC_CONFIG, ETCD_IP, PREFIX, underlay, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(120)

USER, PASSWORD = "flannel", "s3cret-pw"


# No ETCD_CONFIG: each test starts its own kind of etcd in the `underlay` fixture.


def failure_line(node, *flags: str) -> str:
    """Run the daemon to its exit; its last stderr line (and no traceback)."""
    proc = node.ns.popen(*node.argv(*flags), stdout=-1, stderr=-1, start_new_session=True)
    node.proc = proc
    out, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == 1 and out == b"", text
    assert "Traceback" not in text
    return text.strip().splitlines()[-1]


def as_user(etcd: EtcdServer, *args: str):
    """etcdctl as the daemon's prefix-limited user."""
    return etcd.ns.run(ETCDCTL, "--endpoints", etcd.endpoint, "--dial-timeout", "2s",
                       "--user", f"{USER}:{PASSWORD}", *args, check=False,
                       env=dict(os.environ, ETCDCTL_API="3"))


def test_tls_with_client_certificates(underlay):
    pki = make_pki(os.path.join(underlay.dir, "pki"), ETCD_IP)
    etcd = underlay.start_etcd(EtcdServer.with_tls(underlay.ns, ETCD_IP, pki))
    etcd.put(PREFIX + "/config", ALLOC_CONFIG)
    assert etcd.endpoint.startswith("https://")
    good = underlay.node().start("--etcd-cafile", pki.ca, "--etcd-certfile", pki.client_cert,
                                 "--etcd-keyfile", pki.client_key)
    env = good.wait_ready()
    assert f"{env.subnet.network.network_address}-24" in "".join(etcd.get_prefix(PREFIX + "/subnets/"))
    rogue = underlay.node()
    line = failure_line(rogue, "--etcd-cafile", pki.ca, "--etcd-certfile", pki.rogue_cert,
                        "--etcd-keyfile", pki.rogue_key, "--etcd-dial-timeout", "2")
    assert line.startswith(f"flanneletted: cannot reach etcd at https://{ETCD_IP}:2379: "
                           "TLS handshake failed, check --etcd-cafile")
    # A CA that did not sign etcd's certificate: the daemon must not trust the server.
    wrong_ca = os.path.join(os.path.dirname(pki.ca), "flt-rogue-ca.crt")
    line = failure_line(rogue, "--etcd-cafile", wrong_ca, "--etcd-certfile", pki.client_cert,
                        "--etcd-keyfile", pki.client_key, "--etcd-dial-timeout", "2")
    assert line.startswith(f"flanneletted: cannot reach etcd at https://{ETCD_IP}:2379: "
                           "TLS handshake failed, check --etcd-cafile"), line
    line = failure_line(rogue, "--etcd-cafile", pki.ca, "--etcd-dial-timeout", "2")
    assert line.startswith("flanneletted: cannot reach etcd") and "TLS handshake failed" in line
    line = failure_line(rogue, "--etcd-cafile", "/nonexistent/ca.pem")
    assert line == "flanneletted: cannot read /nonexistent/ca.pem: No such file or directory"


def test_auth_user_limited_to_the_prefix(underlay):
    etcd = underlay.start_etcd()
    etcd.put(PREFIX + "/config", ALLOC_CONFIG)
    etcd.enable_auth(USER, PASSWORD, PREFIX)
    creds = ("--etcd-username", USER, "--etcd-password", PASSWORD)
    a = underlay.node().start(*creds)
    a.wait_ready()
    assert len(etcd.get_prefix(PREFIX + "/subnets/")) == 1

    # The daemon's user, while the daemon works: its prefix only.
    assert as_user(etcd, "put", PREFIX + "/probe", "x").returncode == 0  # the credentials are right
    for args in (("put", "/elsewhere/key", "x"), ("get", "/elsewhere/key"), ("get", "--prefix", "/"),
                 ("put", PREFIX + "-sibling/key", "x"), ("del", "--prefix", "/coreos.com/")):
        out = as_user(etcd, *args)
        assert out.returncode != 0 and b"permission denied" in out.stderr, (args, out)
    assert etcd.get_prefix("/elsewhere/") == {}
    assert a.http("/readyz")[0] == 200

    # etcd forgets its auth tokens when it restarts: the daemon must log in again.
    etcd.stop()
    etcd.start()
    b = underlay.node().start(*creds)
    b.wait_ready()
    wait_for("a to learn of b", lambda: a.metric("leases_known") == 2, node=a)

    other = underlay.node()
    line = failure_line(other, "--etcd-username", USER, "--etcd-password", "wrong")
    assert line.startswith(f"flanneletted: etcd at http://{ETCD_IP}:2379 refused our credentials")
    assert "authentication failed" in line
    # The role covers /coreos.com/network only: another prefix is refused, clearly.
    line = failure_line(other, *creds, "--etcd-prefix", "/elsewhere/network")
    assert line.startswith("flanneletted: etcd refused read network config") and "permission denied" in line
