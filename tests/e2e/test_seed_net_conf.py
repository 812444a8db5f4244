"""The seed-net-conf init container script against a real etcd: it writes the shipped
net-conf.json once and never overwrites an operator's config."""
from __future__ import annotations

import json
import os
import pathlib

import pytest

from conf.flannel import load_network_config
from tests.support.etcd import EtcdServer

pytestmark = pytest.mark.timeout(60)
REPO = pathlib.Path(__file__).resolve().parents[2]
SEED = str(REPO / "packaging" / "image" / "seed-net-conf")
NET_CONF = REPO / "conf" / "shipped" / "net-conf.json"


def stored_config(etcd: EtcdServer) -> str:
    return etcd.ctl("get", "--print-value-only", "/flt/network/config").stdout.decode()


def test_seed_writes_the_config_once(netns, tmp_path):
    with EtcdServer(netns, "127.0.0.1") as etcd:
        env = dict(os.environ, FLANNELD_ETCD_ENDPOINTS=etcd.endpoint,
                   FLANNELD_ETCD_PREFIX="/flt/network")
        first = netns.run(SEED, str(NET_CONF), env=env)
        assert b"wrote" in first.stdout
        stored = stored_config(etcd)
        assert json.loads(stored) == json.loads(NET_CONF.read_text())
        assert str(load_network_config(stored).network) == "10.244.0.0/16"

        other = tmp_path / "other.json"
        other.write_text('{"Network": "10.99.0.0/16", "Backend": {"Type": "host-gw"}}')
        again = netns.run(SEED, str(other), env=env)
        assert b"already set" in again.stdout
        assert stored_config(etcd) == stored


def test_seed_fails_when_etcd_is_unreachable(netns):
    env = dict(os.environ, FLANNELD_ETCD_ENDPOINTS="http://127.0.0.1:1")
    proc = netns.run(SEED, str(NET_CONF), env=env, check=False)
    assert proc.returncode != 0
