"""A reboot leaks no address, through the installed executable on both paths.

The boot id is read from a file the test owns (FLANNELETTE_BOOT_ID_FILE, in the plugin's
environment for the in-process path and in the fast-path server's for the fast path); a
new boot is a new id in it, with the old pods' veths and netns removed as a reboot would.
"""
from __future__ import annotations

import os

import pytest

from ipam.boot import BOOT_ID_ENV

pytestmark = pytest.mark.timeout(300)

BOOT_BEFORE = "5eed0000-0000-4000-8000-0000000000b1"
BOOT_NOW = "5eed0000-0000-4000-8000-0000000000b2"
RANGE_SIZE = 6  # 10.244.1.2 - 10.244.1.7
SMALL_RANGE = {"ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.2",
                            "rangeEnd": f"10.244.1.{RANGE_SIZE + 1}"}]]}


@pytest.fixture(autouse=True)
def boot_file(tmp_path, monkeypatch):
    """Set before the `cni` fixture starts its fast-path server, which inherits it."""
    path = tmp_path / "boot_id"
    path.write_text(BOOT_BEFORE + "\n")
    monkeypatch.setenv(BOOT_ID_ENV, str(path))
    return str(path)


@pytest.fixture
def node(cni, boot_file):
    cni.boot_file = boot_file
    return cni


def run(node, command, cid, pod=None, **extra):
    conf = node.conf("1.1.0", ipam={"type": "flannelette-ipam", "dataDir": node.ipam_dir, **SMALL_RANGE},
                     **extra)
    return node.run(command, conf, cid=cid, pod=pod, extra_env={BOOT_ID_ENV: node.boot_file})


def reboot(node) -> None:
    """What a reboot does to a node: every pod and veth gone, a new boot id; files stay."""
    for pod in node._pods:
        pod.close()
    for veth in node.node_veths():
        node.node.run("ip", "link", "delete", veth, check=False)  # may be gone with its pod already
    with open(node.boot_file, "w") as f:
        f.write(BOOT_NOW + "\n")


def plugin_log(node, outcomes) -> str:
    """Where the reclaim's lines went: the daemon's log on the fast path, else stderr."""
    if node.mode == "fastpath":  # the `cni` fixture's server logs next to its socket
        with open(os.path.join(node.root, "run", "flannelette", "cni.sock.log"), errors="replace") as f:
            return f.read()
    return "".join(o.stderr for o in outcomes)


def test_a_range_full_of_the_previous_boots_reservations_starts_a_pod_at_once(node):
    old = [f"c-old{i}" for i in range(RANGE_SIZE)]
    for cid in old:
        out = run(node, "ADD", cid, node.pod())
        assert out.status == 0, out
    full = run(node, "ADD", "c-one-too-many", node.pod())
    assert full.result["code"] == 100 and "no IP addresses available" in full.result["msg"], full
    assert len(node.allocations()) == RANGE_SIZE and len(node.state_files()) == RANGE_SIZE

    reboot(node)
    new_pod = node.pod()
    first = run(node, "ADD", "c-new", new_pod)
    assert first.status == 0, first
    address = first.result["ips"][0]["address"]
    assert node.allocations() == {address.split("/")[0]: "c-new\neth0"}
    assert node.state_files() == ["c-new:eth0.json"]
    new_pod.run("ping", "-c1", "-W2", "10.244.1.1")

    log = plugin_log(node, [first])
    released = [line for line in log.splitlines() if "reserved before this boot" in line]
    assert len(released) == RANGE_SIZE, log  # one line per address
    for n, line in enumerate(sorted(released, key=lambda s: int(s.split("released 10.244.1.")[1].split()[0]))):
        assert f"released 10.244.1.{n + 2} of container c-old{n} ifname eth0" in line
        assert BOOT_BEFORE in line and BOOT_NOW in line
    forgotten = [line for line in log.splitlines() if "set up before this boot" in line]
    assert sorted(line.split("forgot attachment ")[1].split()[0] for line in forgotten) == \
        sorted(f"{cid}:eth0" for cid in old)
    print(f"[{node.mode}] range of {RANGE_SIZE} full of the previous boot's reservations: "
          f"{len(released)} released, {len(forgotten)} state files forgotten, new pod got {address}")

    # The rest of the range is free again; this boot's reservations are never reclaimed.
    later = [run(node, "ADD", f"c-new{i}", node.pod()) for i in range(RANGE_SIZE - 1)]
    assert all(o.status == 0 for o in later), later
    assert len(node.allocations()) == RANGE_SIZE
    assert "c-new\neth0" in node.allocations().values()
    assert plugin_log(node, [first, *later]).count("reserved before this boot") == RANGE_SIZE

    # CNI GC still reclaims what the runtime no longer lists.
    valid = [{"containerID": "c-new", "ifname": "eth0"}]
    gc = run(node, "GC", "", **{"cni.dev/valid-attachments": valid})
    assert (gc.status, gc.result) == (0, None), gc
    assert node.allocations() == {address.split("/")[0]: "c-new\neth0"}
    assert node.state_files() == ["c-new:eth0.json"]
    assert len(node.node_veths()) == 1
    out = run(node, "DEL", "c-new", new_pod)
    assert out.status == 0, out
    assert node.allocations() == {} and node.state_files() == [] and node.node_veths() == set()


def test_a_del_after_the_reboot_for_a_pod_of_the_previous_boot_succeeds(node):
    """The runtime tears down the sandboxes it remembers: DEL must succeed and free all."""
    assert run(node, "ADD", "c-before", node.pod()).status == 0
    reboot(node)
    out = run(node, "DEL", "c-before")
    assert (out.status, out.result) == (0, None), out
    assert node.allocations() == {}
