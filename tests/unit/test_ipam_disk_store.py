"""DiskStore: host-local's layout, exclusive and crash-safe reservations, odd files."""
import ipaddress
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conf.errors import CniError
from conf.plugin import IpamRange
from ipam.allocator import Allocator, make_range_sets
from ipam.disk_store import DiskStore

ip = ipaddress.ip_address
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def store(tmp_path):
    return DiskStore(str(tmp_path), "cbr0")


def reserve(store, cid, ifname, addr, range_id=0):
    with store.locked():
        return store.reserve(cid, ifname, ip(addr), range_id)


def test_layout_is_host_locals(store, tmp_path):
    assert reserve(store, "c1", "eth0", "10.1.0.2")
    assert reserve(store, "c2", "eth0", "fc00::2", range_id=1)
    d = tmp_path / "cbr0"
    assert (d / "10.1.0.2").read_bytes() == b"c1\r\neth0"
    assert (d / "fc00::2").read_bytes() == b"c2\r\neth0"
    assert (d / "last_reserved_ip.0").read_text() == "10.1.0.2"
    assert (d / "last_reserved_ip.1").read_text() == "fc00::2"
    assert stat.S_IMODE(os.stat(d / "10.1.0.2").st_mode) == 0o600
    assert sorted(os.listdir(d)) == ["10.1.0.2", "boot_id", "fc00::2", "last_reserved_ip.0", "last_reserved_ip.1",
                                     "lock"]


def test_reserve_is_exclusive(store):
    assert reserve(store, "c1", "eth0", "10.1.0.2")
    assert not reserve(store, "c2", "eth0", "10.1.0.2")
    with store.locked():
        assert store.list_all()[0].container_id == "c1"


def test_lookup_and_release_by_attachment_with_legacy_files(store, tmp_path):
    reserve(store, "c1", "eth0", "10.1.0.2")
    reserve(store, "c1", "net1", "10.1.0.3")
    (tmp_path / "cbr0" / "10.1.0.4").write_text("c1")  # host-local < v0.8.0: id only
    (tmp_path / "cbr0" / "10.1.0.5").write_text("c10\r\neth0")
    with store.locked():
        assert [str(x) for x in store.get_by_id("c1", "eth0")] == ["10.1.0.2", "10.1.0.4"]
        assert [str(x) for x in store.release_by_id("c1", "eth0")] == ["10.1.0.2", "10.1.0.4"]
        assert [str(r.ip) for r in store.list_all()] == ["10.1.0.3", "10.1.0.5"]
        store.release(ip("10.1.0.3"))
        store.release(ip("10.1.0.3"))  # already gone: no error
        assert [(str(r.ip), r.container_id) for r in store.list_all()] == [("10.1.0.5", "c10")]


def test_list_all_ignores_everything_but_address_files(store, tmp_path):
    reserve(store, "c1", "eth0", "10.1.0.2")
    d = tmp_path / "cbr0"
    for name in (".10.1.0.9.tmp123", "README", "10.1.0.300"):
        (d / name).write_text("x")
    with store.locked():
        assert [str(r.ip) for r in store.list_all()] == ["10.1.0.2"]
        assert store.remove_stale_temp_files() == 1
    assert not (d / ".10.1.0.9.tmp123").exists() and (d / "README").exists()


def test_empty_file_is_reclaimed_and_garbled_file_blocks(store, tmp_path):
    d = tmp_path / "cbr0"
    d.mkdir()
    (d / "10.1.0.2").write_bytes(b"")  # writer killed between create and write
    (d / "10.1.0.3").write_bytes(b"\xff\xfe\x00")  # not UTF-8
    (d / "10.1.0.4").write_bytes(b"../../etc\r\neth0")  # not a container id
    with store.locked():
        assert {str(r.ip): r.container_id for r in store.list_all()} == {"10.1.0.2": "", "10.1.0.3": "", "10.1.0.4": ""}
    assert reserve(store, "c1", "eth0", "10.1.0.2")
    assert not reserve(store, "c1", "eth0", "10.1.0.3")
    assert not reserve(store, "c1", "eth0", "10.1.0.4")
    assert (d / "10.1.0.2").read_bytes() == b"c1\r\neth0"


def test_garbled_last_reserved_hint_is_ignored(store, tmp_path):
    reserve(store, "c1", "eth0", "10.1.0.2")
    (tmp_path / "cbr0" / "last_reserved_ip.0").write_text("garbage")
    with store.locked():
        assert store.last_reserved_ip(0) is None and store.last_reserved_ip(5) is None


def test_death_before_the_link_leaves_the_address_free(store, tmp_path, monkeypatch):
    """Simulated kill after writing the content but before link(): no file at <ip>."""
    real_link = os.link

    def killed(*a, **kw):
        raise SystemExit("killed")
    monkeypatch.setattr(os, "link", killed)
    with pytest.raises(SystemExit):
        reserve(store, "c1", "eth0", "10.1.0.2")
    monkeypatch.setattr(os, "link", real_link)
    assert not (tmp_path / "cbr0" / "10.1.0.2").exists()
    assert reserve(store, "c2", "eth0", "10.1.0.2")


def test_store_in_a_file_is_an_io_error(tmp_path):
    (tmp_path / "blocker").write_text("")
    with pytest.raises(CniError) as e:
        reserve(DiskStore(str(tmp_path / "blocker"), "cbr0"), "c1", "eth0", "10.1.0.2")
    assert e.value.code == 5 and "blocker" in e.value.msg


def test_threads_with_their_own_store_objects_never_share_an_address(tmp_path):
    ranges = make_range_sets([[IpamRange(subnet="10.1.0.0/24")]])

    def worker(n):
        alloc = Allocator(DiskStore(str(tmp_path), "cbr0"), ranges)
        return [str(alloc.allocate(f"t{n}-{i}", "eth0")[0].ip) for i in range(20)]
    with ThreadPoolExecutor(8) as pool:
        got = [a for batch in pool.map(worker, range(8)) for a in batch]
    assert len(set(got)) == 160
    store = DiskStore(str(tmp_path), "cbr0")
    with store.locked():
        assert len(store.list_all()) == 160


CHILD = textwrap.dedent("""
    import sys
    from conf.plugin import IpamRange
    from ipam.allocator import Allocator, make_range_sets
    from ipam.disk_store import DiskStore
    alloc = Allocator(DiskStore(sys.argv[1], "cbr0"), make_range_sets([[IpamRange(subnet="10.8.0.0/16")]]))
    i = 0
    while True:
        alloc.allocate(f"container-{i}", "eth0")
        i += 1
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("round_", range(3))
def test_sigkill_mid_allocation_never_leaves_a_partial_reservation(tmp_path, round_):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": ROOT})
    d = tmp_path / "cbr0"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(os.listdir(d) if d.exists() else []) < 40 + 20 * round_:
            time.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    store = DiskStore(str(tmp_path), "cbr0")
    with store.locked():
        held = store.list_all()
        assert len(held) >= 30
        assert all(r.container_id.startswith("container-") and r.ifname == "eth0" for r in held)
        # every reservation is distinct and the next allocation still works
        assert len({r.container_id for r in held}) == len(held)
    Allocator(store, make_range_sets([[IpamRange(subnet="10.8.0.0/16")]])).allocate("after", "eth0")


def test_a_reservation_waits_for_no_disk_flush(store, tmp_path, monkeypatch):
    """As host-local: a reservation must outlive its process, not the kernel (a lost one
    belongs to an earlier boot, which the next boot releases anyway), so ADD never flushes."""
    def flush(fd):
        raise AssertionError("the store flushed a file to disk")
    for name in ("fsync", "fdatasync", "sync"):
        monkeypatch.setattr(os, name, flush)
    with store.locked():
        assert store.reserve("c1", "eth0", ip("10.1.0.2"), 0)
        assert not store.reserve("c2", "eth0", ip("10.1.0.2"), 0)
    with store.locked():
        assert [str(x) for x in store.get_by_id("c1", "eth0")] == ["10.1.0.2"]
    assert (tmp_path / "cbr0" / "10.1.0.2").read_bytes() == b"c1\r\neth0"


def test_temp_files_of_a_killed_writer_go_with_the_next_add_or_del(store, tmp_path):
    """A kill between mkstemp and unlink leaves `.<ip>.*`; DEL (not only GC) must clear it."""
    reserve(store, "c1", "eth0", "10.1.0.2")
    d = tmp_path / "cbr0"
    (d / ".10.1.0.3.k1ll3d").write_text("c2\r\neth0")
    (d / ".last_reserved_ip.0.k1ll3d").write_text("10.1.0.3")
    with store.locked():
        assert [str(x) for x in store.release_by_id("c1", "eth0")] == ["10.1.0.2"]
    assert not [n for n in os.listdir(d) if n.startswith(".")]
    assert "last_reserved_ip.0" in os.listdir(d)


def test_a_hint_rewrite_killed_before_the_cut_still_holds_an_address(store, tmp_path, monkeypatch):
    """10.1.0.9 written over 10.1.0.10, killed before ftruncate: not "10.1.0.90"."""
    reserve(store, "c1", "eth0", "10.1.0.10")

    def killed(*a, **kw):
        raise SystemExit("killed")
    monkeypatch.setattr(os, "ftruncate", killed)
    with pytest.raises(SystemExit):
        reserve(store, "c2", "eth0", "10.1.0.9")
    monkeypatch.undo()
    hint = (tmp_path / "cbr0" / "last_reserved_ip.0").read_text()
    assert hint.strip() == "10.1.0.9"
    with store.locked():
        assert store.last_reserved_ip(0) == ip("10.1.0.9")
    reserve(store, "c3", "eth0", "10.1.0.11")
    assert (tmp_path / "cbr0" / "last_reserved_ip.0").read_text() == "10.1.0.11"


def test_the_first_hint_appears_whole_or_not_at_all(store, tmp_path, monkeypatch):
    reserve(store, "c0", "eth0", "10.1.0.2", range_id=1)  # the directory and its lock exist
    real_link = os.link
    calls = []

    def killed_on_the_hint(src, dst, *a, **kw):
        calls.append(dst)
        if "last_reserved_ip.0" in dst:
            raise SystemExit("killed")
        return real_link(src, dst, *a, **kw)
    monkeypatch.setattr(os, "link", killed_on_the_hint)
    with pytest.raises(SystemExit):
        reserve(store, "c1", "eth0", "10.1.0.5")
    monkeypatch.undo()
    assert not (tmp_path / "cbr0" / "last_reserved_ip.0").exists()  # no empty hint
    with store.locked():
        assert store.last_reserved_ip(0) is None
        assert store.get_by_id("c1", "eth0") == [ip("10.1.0.5")]
    assert not [n for n in os.listdir(tmp_path / "cbr0") if n.startswith(".")]
