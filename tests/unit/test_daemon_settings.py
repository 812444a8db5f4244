"""flanneletted's flags and FLANNELD_* variables (daemon/settings.py, conf/daemon.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from daemon.settings import SettingsError, parse_settings


def test_defaults_are_flanneld_s():
    s = parse_settings([], {})
    assert [str(e) for e in s.etcd_endpoints] == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    assert s.etcd_prefix == "/coreos.com/network"
    assert s.subnet_file == "/run/flannel/subnet.env"
    assert s.subnet_lease_renew_margin == 60 and s.renew_margin_seconds == 3600
    assert s.healthz_port == 0 and str(s.healthz_ip) == "0.0.0.0"
    assert s.cni_socket == "/run/flannelette/cni.sock" and s.state_dir == "/var/lib/flannelette"
    assert s.lease_ttl == 86400 and s.reconcile_interval <= 10 and s.ip_masq is False


def test_flags_are_parsed_and_typed():
    s = parse_settings([
        "--etcd-endpoints=https://10.0.0.1:2379,https://10.0.0.2:2379", "--etcd-prefix", "/x/net/",
        "--etcd-certfile", "/c", "--etcd-keyfile", "/k", "--etcd-cafile", "/ca",
        "--etcd-username", "u", "--etcd-password", "p", "--iface", "eth1", "--iface", "10.0.0.5",
        "--public-ip", "10.0.0.5", "--ip-masq", "--healthz-port", "8471",
        "--subnet-lease-renew-margin", "5", "--cni-socket", "", "--lease-ttl", "30", "-v", "2"], {})
    assert [e.host for e in s.etcd_endpoints] == ["10.0.0.1", "10.0.0.2"] and s.tls
    assert s.etcd_prefix == "/x/net" and s.iface == ["eth1", "10.0.0.5"]
    assert str(s.public_ip) == "10.0.0.5" and s.ip_masq and s.healthz_port == 8471
    assert s.renew_margin_seconds == 300 and s.cni_socket == "" and s.lease_ttl == 30 and s.v == 2


def test_go_style_boolean_values_are_accepted():
    assert parse_settings(["--ip-masq=false"], {}).ip_masq is False
    assert parse_settings(["--ip-masq=true"], {}).ip_masq is True


def test_environment_variables_as_flanneld_and_flags_win():
    env = {"FLANNELD_ETCD_PREFIX": "/env/net", "FLANNELD_IP_MASQ": "true",
           "FLANNELD_IFACE": "eth9", "FLANNELD_SUBNET_LEASE_RENEW_MARGIN": "7"}
    s = parse_settings([], env)
    assert s.etcd_prefix == "/env/net" and s.ip_masq and s.iface == ["eth9"]
    assert s.subnet_lease_renew_margin == 7
    assert parse_settings(["--etcd-prefix", "/flag/net"], env).etcd_prefix == "/flag/net"


@pytest.mark.parametrize("argv,env,needle", [
    (["--subnet-lease-renew-margin", "1440"], {}, "--subnet-lease-renew-margin"),
    (["--subnet-lease-renew-margin", "0"], {}, "--subnet-lease-renew-margin"),
    (["--healthz-port", "http"], {}, "--healthz-port"),
    (["--public-ip", "10.0.0.300"], {}, "--public-ip"),
    (["--etcd-endpoints", "ftp://x:1"], {}, "--etcd-endpoints"),
    (["--etcd-certfile", "/c"], {}, "--etcd-keyfile"),
    (["--etcd-username", "u"], {}, "--etcd-password"),
    (["--no-such-flag"], {}, "--no-such-flag"),
    ([], {"FLANNELD_LEASE_TTL": "soon"}, "FLANNELD_LEASE_TTL"),
    (["--ip-masq=maybe"], {}, "--ip-masq"),
])
def test_bad_input_names_the_flag_or_variable(argv, env, needle):
    with pytest.raises(SettingsError) as err:
        parse_settings(argv, env)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_executable_prints_one_line_and_no_traceback_for_a_bad_flag():
    proc = subprocess.run([sys.executable, "-m", "daemon.main", "--healthz-port", "99999"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--healthz-port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version_flag_prints_the_one_version_the_project_ships(capsys):
    import pathlib
    import tomllib

    from conf import VERSION

    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--version"], {})
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"flanneletted v{VERSION}\n"
    repo = pathlib.Path(__file__).resolve().parents[2]
    assert tomllib.loads((repo / "pyproject.toml").read_text())["project"]["version"] == VERSION
    manifest = (repo / "conf" / "shipped" / "kube-flannelette.yml").read_text()
    images = {line.split("image:")[1].strip() for line in manifest.splitlines() if "image:" in line}
    assert images == {f"ghcr.io/flannelette/flannelette:v{VERSION}"}
