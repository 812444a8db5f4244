"""The reference host-local (Debian's containernetworking-plugins) shares our IPAM directory:
it allocates next to our reservations and leaves our boot marker alone."""
import json
import os
import subprocess

import pytest

from ipam.disk_store import BOOT_MARKER
from tests.unit.test_ipam_boot import BOOT_A, BOOT_B, fake_boot, fill, held, store, store_dir  # noqa: F401 (fixtures)

HOST_LOCAL = "/usr/lib/cni/host-local"


def host_local(command: str, data_dir: str, cid: str) -> subprocess.CompletedProcess:
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "bridge",
            "ipam": {"type": "host-local", "dataDir": data_dir,
                     "ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.6"}]]}}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    return subprocess.run([HOST_LOCAL], input=json.dumps(conf).encode(), env=env, capture_output=True,
                          timeout=30)


@pytest.mark.skipif(not os.access(HOST_LOCAL, os.X_OK), reason="the reference host-local is not installed")
def test_host_local_works_in_our_directory_and_keeps_the_marker(store, fake_boot):
    fill(store, 2)
    out = host_local("ADD", os.path.dirname(store.dir), "hl1")
    assert out.returncode == 0, out
    assert "10.1.0.4/24" in out.stdout.decode()  # next after ours: the marker is no address to it
    assert sorted(held(store).values()) == ["hl1", "old0", "old1"]  # same boot: nothing released
    assert host_local("DEL", os.path.dirname(store.dir), "hl1").returncode == 0
    assert (store_dir(store) / BOOT_MARKER).read_text().strip() == BOOT_A
    fake_boot.switch(BOOT_B)
    assert held(store) == {}
