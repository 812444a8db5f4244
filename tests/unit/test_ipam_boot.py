"""Reboots leak nothing: records of an earlier boot go at this boot's first operation.

The boot id comes from a file the test controls (FLANNELETTE_BOOT_ID_FILE), so a new
boot is one write away.
"""
import ipaddress
import logging
import os
import stat
from pathlib import Path

import pytest

from cni_plugin.state import AttachmentState, list_states, save_state
from conf.plugin import IpamRange
from ipam import boot
from ipam.allocator import Allocator, collect_garbage, make_range_sets, release
from ipam.disk_store import BOOT_MARKER, DiskStore

ip = ipaddress.ip_address
BOOT_A = "0c0ffee0-0000-4000-8000-00000000000a"
BOOT_B = "0c0ffee0-0000-4000-8000-00000000000b"


class FakeBoot:
    def __init__(self, path):
        self.path = path

    def switch(self, boot_id: str) -> None:
        self.path.write_text(boot_id + "\n")


@pytest.fixture
def fake_boot(tmp_path, monkeypatch):
    path = tmp_path / "boot_id"
    monkeypatch.setenv(boot.BOOT_ID_ENV, str(path))
    fb = FakeBoot(path)
    fb.switch(BOOT_A)
    return fb


@pytest.fixture
def store(tmp_path):
    return DiskStore(str(tmp_path / "ipam"), "cbr0")


def small_range(last: int = 6):
    """10.1.0.2-10.1.0.<last>, gateway .1: `last - 1` addresses."""
    return make_range_sets([[IpamRange(subnet="10.1.0.0/24", rangeEnd=f"10.1.0.{last}")]])


def fill(store, count: int, prefix: str = "old") -> list[str]:
    allocator = Allocator(store, small_range())
    return [str(allocator.allocate(f"{prefix}{i}", "eth0")[0].ip) for i in range(count)]


def store_dir(store) -> Path:
    return Path(store.dir)


def held(store) -> dict[str, str]:
    with store.locked():
        return {str(r.ip): r.container_id for r in store.list_all()}


def test_a_full_range_of_an_earlier_boot_is_released_at_the_first_add(store, fake_boot, caplog):
    assert fill(store, 5) == [f"10.1.0.{n}" for n in range(2, 7)]
    with pytest.raises(Exception, match="no IP addresses available"):
        fill(store, 1, prefix="more")
    fake_boot.switch(BOOT_B)
    with caplog.at_level(logging.INFO, logger="flannelette.ipam"):
        got = Allocator(store, small_range()).allocate("new", "eth0")
    assert [str(a.ip) for a in got] == ["10.1.0.2"]  # the hint (.6) wraps: least recently used first
    assert held(store) == {"10.1.0.2": "new"}
    lines = [r.getMessage() for r in caplog.records if r.name == "flannelette.ipam"]
    assert len(lines) == 5, lines  # one per released address
    for n, line in zip(range(2, 7), lines):
        assert line.startswith(f"released 10.1.0.{n} of container old{n - 2} ifname eth0")
        assert BOOT_A in line and BOOT_B in line
    assert (store_dir(store) / BOOT_MARKER).read_text().strip() == BOOT_B


def test_reservations_of_this_boot_are_never_touched(store, fake_boot, caplog):
    fill(store, 2)
    fake_boot.switch(BOOT_B)
    fill(store, 3, prefix="now")
    with caplog.at_level(logging.INFO, logger="flannelette.ipam"):
        for _ in range(3):  # later operations of the same boot: nothing more goes
            assert sorted(held(store).values()) == ["now0", "now1", "now2"]
            release(store, "nobody", "eth0")
    assert not [r for r in caplog.records if r.name == "flannelette.ipam"]


def test_a_host_local_dir_without_marker_is_first_sight(store, fake_boot, tmp_path):
    directory = store_dir(store)
    directory.mkdir(parents=True)
    (directory / "10.1.0.2").write_bytes(b"hostlocal\r\neth0")
    (directory / "last_reserved_ip.0").write_text("10.1.0.2")
    # Unknown boot: kept (GC decides), and this boot is recorded from now on.
    assert held(store) == {"10.1.0.2": "hostlocal"}
    assert (directory / BOOT_MARKER).read_text().strip() == BOOT_A
    fake_boot.switch(BOOT_B)
    assert held(store) == {}


def test_an_unreadable_boot_id_releases_nothing(store, fake_boot, monkeypatch):
    fill(store, 2)
    monkeypatch.setenv(boot.BOOT_ID_ENV, str(fake_boot.path) + ".missing")
    assert len(held(store)) == 2
    assert (store_dir(store) / BOOT_MARKER).read_text().strip() == BOOT_A


def test_garbled_empty_and_temporary_files_of_an_earlier_boot_go_too(store, fake_boot):
    fill(store, 1)
    directory = store_dir(store)
    (directory / "10.1.0.4").write_bytes(b"\xff\xfe")
    (directory / "10.1.0.5").write_bytes(b"")
    (directory / ".10.1.0.6.abcd").write_bytes(b"half")
    fake_boot.switch(BOOT_B)
    assert held(store) == {}
    assert sorted(os.listdir(directory)) == [BOOT_MARKER, "last_reserved_ip.0", "lock"]


def test_gc_still_releases_what_the_runtime_no_longer_lists(store, fake_boot):
    fake_boot.switch(BOOT_B)
    fill(store, 3, prefix="now")
    collect_garbage(store, [("now1", "eth0")])
    assert held(store) == {"10.1.0.3": "now1"}


def test_the_marker_is_ours_alone_and_not_world_writable(store, fake_boot):
    old = os.umask(0)
    try:
        fill(store, 1)
    finally:
        os.umask(old)
    marker = store_dir(store) / BOOT_MARKER
    assert stat.S_IMODE(marker.stat().st_mode) == 0o644
    with store.locked():
        assert [str(r.ip) for r in store.list_all()] == ["10.1.0.2"]  # the marker is no reservation
        assert store.get_by_id(BOOT_A, "eth0") == []


def attachment(cid: str) -> AttachmentState:
    return AttachmentState(container_id=cid, ifname="eth0", host_veth=f"veth{cid}", bridge="cni0")


def test_plugin_state_of_an_earlier_boot_is_forgotten_at_the_next_save(tmp_path, fake_boot, caplog):
    data = str(tmp_path / "plugin")
    for cid in ("old1", "old2"):
        save_state(data, "cbr0", attachment(cid))
    leftover = tmp_path / "plugin" / "cbr0" / ".old3:eth0.json.tmp"
    leftover.write_text("{")
    fake_boot.switch(BOOT_B)
    assert [s.container_id for s in list_states(data, "cbr0")] == ["old1", "old2"]  # reading forgets nothing
    with caplog.at_level(logging.INFO, logger="flannelette"):
        save_state(data, "cbr0", attachment("new1"))
        save_state(data, "cbr0", attachment("new2"))
    assert [s.container_id for s in list_states(data, "cbr0")] == ["new1", "new2"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("forgot attachment")]
    assert sorted(line.split()[2] for line in lines) == ["old1:eth0", "old2:eth0", "old3:eth0"]
    assert not leftover.exists()
