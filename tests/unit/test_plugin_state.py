"""Per-attachment state files and the IPAM call plumbing (no root, no netlink)."""
from __future__ import annotations

import json
import os
import stat

import pytest

from conf.cni import RuntimeEnv
from conf.errors import CniError, DelegateError
from cni_plugin import ipam_client
from cni_plugin.state import AttachmentState, list_states, load_state, remove_state, save_state


def _state(cid: str, ifname: str = "eth0") -> AttachmentState:
    return AttachmentState(container_id=cid, ifname=ifname, netns="/run/netns/p", host_veth="veth12345678",
                           bridge="cni0", ipam={"type": "flannelette-ipam", "subnetFile": "/x"},
                           config={"name": "n"}, result={"ips": []})


def test_save_load_remove_roundtrip(tmp_path):
    path = save_state(str(tmp_path), "net", _state("c1"))
    assert path == str(tmp_path / "net" / "c1:eth0.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_state(str(tmp_path), "net", "c1", "eth0") == _state("c1")
    remove_state(str(tmp_path), "net", "c1", "eth0")
    remove_state(str(tmp_path), "net", "c1", "eth0")  # already gone: fine
    assert load_state(str(tmp_path), "net", "c1", "eth0") is None


def test_a_write_killed_half_way_leaves_one_file_that_retry_and_del_clear(tmp_path):
    save_state(str(tmp_path), "net", _state("c1"))
    (tmp_path / "net" / ".c1:eth0.json.tmp").write_text('{"contai')  # killed mid-write
    save_state(str(tmp_path), "net", _state("c1"))  # the retried ADD
    assert sorted(os.listdir(tmp_path / "net")) == ["attachments.boot_id", "c1:eth0.json", "lock"]
    (tmp_path / "net" / ".c1:eth0.json.tmp").write_text('{"contai')
    remove_state(str(tmp_path), "net", "c1", "eth0")  # DEL
    assert sorted(os.listdir(tmp_path / "net")) == ["attachments.boot_id", "lock"]


def test_list_states_skips_temp_and_damaged_files(tmp_path):
    for cid in ("c2", "c1"):
        save_state(str(tmp_path), "net", _state(cid))
    (tmp_path / "net" / ".c3:eth0.json.tmp").write_text("{}")
    (tmp_path / "net" / "c4:eth0.json").write_text("{not json")
    assert [s.container_id for s in list_states(str(tmp_path), "net")] == ["c1", "c2"]
    assert load_state(str(tmp_path), "net", "c4", "eth0") is None  # damaged: DEL falls back
    assert list(list_states(str(tmp_path), "other")) == []


def test_ipam_config_defaults_subnet_file_only_for_the_builtin():
    raw = {"cniVersion": "1.0.0", "name": "n", "type": "flannelette"}
    built_in = ipam_client.ipam_config(raw, {"type": "flannelette-ipam"}, "/s.env")
    assert built_in["ipam"] == {"type": "flannelette-ipam", "subnetFile": "/s.env"}
    own = ipam_client.ipam_config(raw, {"type": "flannelette-ipam", "subnetFile": "/o.env"}, "/s.env")
    assert own["ipam"]["subnetFile"] == "/o.env"
    foreign = ipam_client.ipam_config(raw, {"type": "host-local"}, "/s.env")
    assert foreign["ipam"] == {"type": "host-local"} and foreign["name"] == "n"


def test_delegate_environment_carries_the_request(monkeypatch):
    monkeypatch.setenv("CNI_COMMAND", "STALE")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = RuntimeEnv(command="DEL", container_id="c1", netns="/n", ifname="eth0",
                     args={"K8S_POD_NAME": "p", "IgnoreUnknown": "1"}, path=["/a", "/b"])
    out = ipam_client.delegate_environ(env)
    assert out["CNI_COMMAND"] == "DEL" and out["CNI_PATH"] == "/a:/b" and out["PATH"] == "/usr/bin"
    assert out["CNI_ARGS"] == "K8S_POD_NAME=p;IgnoreUnknown=1"


def _plugin(directory, name: str, script: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def test_delegate_exec_result_and_errors(tmp_path):
    _plugin(tmp_path, "good", 'cat >/dev/null; echo \'{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"}]}\'\n')
    _plugin(tmp_path, "coded", 'cat >/dev/null; echo \'{"code":100,"msg":"range full"}\'; exit 1\n')
    _plugin(tmp_path, "mute", "cat >/dev/null; exit 3\n")
    env = RuntimeEnv(command="ADD", container_id="c1", netns="/n", ifname="eth0", path=[str(tmp_path)])
    raw = {"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "good"}}

    result = ipam_client.call_ipam(env, "ADD", raw)
    assert result.ips[0].address == "10.1.0.5/24"
    assert ipam_client.call_ipam(env, "DEL", raw) is None

    with pytest.raises(CniError) as e:
        ipam_client.call_ipam(env, "ADD", {**raw, "ipam": {"type": "coded"}})
    assert e.value.code == 100 and "range full" in e.value.msg
    with pytest.raises(DelegateError) as e:
        ipam_client.call_ipam(env, "ADD", {**raw, "ipam": {"type": "mute"}})
    assert "exit status 3" in e.value.msg
    with pytest.raises(DelegateError) as e:
        ipam_client.call_ipam(env, "ADD", {**raw, "ipam": {"type": "absent"}})
    assert "absent" in e.value.msg and str(tmp_path) in e.value.msg
    with pytest.raises(DelegateError):
        ipam_client.find_plugin("../good", [str(tmp_path)])


def test_delegate_gets_the_full_config_on_stdin(tmp_path):
    seen = tmp_path / "stdin.json"
    _plugin(tmp_path, "record", f'cat > {seen}; echo "$CNI_COMMAND" > {seen}.cmd\n')
    env = RuntimeEnv(command="ADD", container_id="c1", netns="/n", ifname="eth0", path=[str(tmp_path)])
    raw = {"cniVersion": "1.0.0", "name": "n", "type": "flannelette", "ipam": {"type": "record"}}
    ipam_client.call_ipam(env, "DEL", raw)
    assert json.loads(seen.read_text()) == raw
    assert (tmp_path / "stdin.json.cmd").read_text().strip() == "DEL"


def test_staging_leftovers_are_listed_by_attachment_for_gc(tmp_path):
    """A save killed before its rename, with no state file at all: GC can still find it."""
    from cni_plugin.state import list_staging, remove_staging
    save_state(str(tmp_path), "net", _state("c1"))
    (tmp_path / "net" / ".c2:eth0.json.tmp").write_text('{"contai')
    (tmp_path / "net" / ".c1:net1.json.tmp").write_text("")
    assert sorted(list_staging(str(tmp_path), "net")) == [("c1", "net1"), ("c2", "eth0")]
    remove_staging(str(tmp_path), "net", "c2", "eth0")
    remove_staging(str(tmp_path), "net", "c2", "eth0")  # already gone: fine
    assert sorted(n for n in os.listdir(tmp_path / "net") if "json" in n) == [".c1:net1.json.tmp", "c1:eth0.json"]
    assert list_staging(str(tmp_path), "other") == []

