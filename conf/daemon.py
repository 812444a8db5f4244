"""flanneletted's settings: flanneld's flag names, flannelette's additions, their rules.

Parsing (argv and FLANNELD_* environment variables) lives in daemon/settings.py;
this model only holds the values and checks them, naming the flag on error.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Optional
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conf.flannel import DEFAULT_PREFIX, DEFAULT_SUBNET_FILE

DEFAULT_ENDPOINTS = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
DEFAULT_CNI_SOCKET = "/run/flannelette/cni.sock"
DEFAULT_STATE_DIR = "/var/lib/flannelette"
DAY = 24 * 3600


class EtcdEndpoint(BaseModel):
    """One `scheme://host:port` of --etcd-endpoints."""

    model_config = ConfigDict(frozen=True)

    scheme: str
    host: str
    port: int

    @property
    def secure(self) -> bool:
        return self.scheme == "https"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(text: str) -> EtcdEndpoint:
    text = text.strip()
    parts = urlsplit(text if "://" in text else "http://" + text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: scheme must be http or https")
    try:
        port = parts.port or 2379
    except ValueError:
        raise ValueError(f"{text!r}: bad port") from None
    if not parts.hostname:
        raise ValueError(f"{text!r}: no host")
    return EtcdEndpoint(scheme=parts.scheme, host=parts.hostname, port=port)


IPTABLES_MODES = ("auto", "legacy", "nft")  # --iptables-mode (daemon/dataplane/masquerade.py)


def split_patterns(text: str) -> list[str]:
    """A comma list of regexes, split only at commas outside [...], (...) and {...}:
    `10\\.0\\.[0-9]{1,3}` stays one pattern. A literal top-level comma needs `\\,`."""
    parts, start, depth, in_class, i = [], 0, 0, False, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 1  # the escaped character is never a separator
        elif in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c in "({":
            depth += 1
        elif c in ")}":
            depth = max(0, depth - 1)
        elif c == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    return parts + [text[start:]]


class DaemonSettings(BaseModel):
    """Every flag of flanneletted; field name = flag name with `_` for `-`."""

    model_config = ConfigDict(extra="forbid")

    etcd_endpoints: list[EtcdEndpoint] = Field(
        default_factory=lambda: [parse_endpoint(e) for e in DEFAULT_ENDPOINTS])
    etcd_prefix: str = DEFAULT_PREFIX
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    etcd_cafile: str = ""
    etcd_username: str = ""
    etcd_password: str = ""
    etcd_dial_timeout: float = Field(default=10.0, gt=0, le=600)
    iface: list[str] = Field(default_factory=list)
    iface_regex: list[str] = Field(default_factory=list)  # tried when no --iface exists
    iface_can_reach: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
    public_ip: Optional[ipaddress.IPv4Address] = None
    public_ipv6: Optional[ipaddress.IPv6Address] = None
    subnet_file: str = DEFAULT_SUBNET_FILE
    ip_masq: bool = False
    iptables_mode: str = "auto"  # auto (what the node uses) | legacy | nft
    healthz_ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address("0.0.0.0")
    healthz_port: int = Field(default=0, ge=0, le=65535)  # 0 disables, as in flanneld
    subnet_lease_renew_margin: int = Field(default=60, ge=1, le=1439)  # minutes
    cni_socket: str = DEFAULT_CNI_SOCKET  # "" disables the fast path
    cni_bridge: str = "cni0"  # re-addressed when the node's subnet changes ("" = leave it)
    state_dir: str = DEFAULT_STATE_DIR
    lease_ttl: int = Field(default=DAY, ge=5, le=30 * DAY)  # seconds
    reconcile_interval: float = Field(default=10.0, gt=0, le=3600)  # seconds
    health_probe_rate: float = Field(default=20.0, ge=0, le=1000)  # echoes/s to peers; 0: no mesh
    health_probe_interval: float = Field(default=10.0, gt=0, le=86400)  # seconds between echoes to one peer
    v: int = Field(default=0, ge=0, le=10)

    @field_validator("etcd_endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, value):
        if isinstance(value, str):
            value = [e for e in value.split(",") if e.strip()]
        out = [parse_endpoint(e) if isinstance(e, str) else e for e in value]
        if not out:
            raise ValueError("at least one endpoint is needed")
        return out

    @field_validator("iface", mode="before")
    @classmethod
    def _split_ifaces(cls, value):
        if isinstance(value, str):
            value = [value]
        return [p.strip() for item in value for p in item.split(",") if p.strip()]

    @field_validator("iface_regex", mode="before")
    @classmethod
    def _split_regexes(cls, value):
        if isinstance(value, str):
            value = [value]
        out = [p.strip() for item in value for p in split_patterns(item) if p.strip()]
        for pattern in out:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{pattern!r} is not a valid regular expression: {e}") from None
        return out

    @field_validator("iface_can_reach", mode="before")
    @classmethod
    def _reach_target(cls, value):
        if isinstance(value, str):
            try:
                return ipaddress.ip_address(value.strip())
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None
        return value

    @field_validator("iptables_mode", mode="before")
    @classmethod
    def _iptables_mode(cls, value):
        mode = value.strip().lower() if isinstance(value, str) else value
        if mode not in IPTABLES_MODES:
            raise ValueError(f"{value!r} is not one of {', '.join(IPTABLES_MODES)}")
        return mode

    @field_validator("etcd_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with /")
        return value.rstrip("/") or "/"

    @model_validator(mode="after")
    def _pairs(self) -> "DaemonSettings":
        if bool(self.etcd_certfile) != bool(self.etcd_keyfile):
            raise ValueError("--etcd-certfile and --etcd-keyfile go together")
        if bool(self.etcd_username) != bool(self.etcd_password):
            raise ValueError("--etcd-username and --etcd-password go together")
        return self

    @property
    def renew_margin_seconds(self) -> int:
        return self.subnet_lease_renew_margin * 60

    @property
    def tls(self) -> bool:
        return any(e.secure for e in self.etcd_endpoints) or bool(self.etcd_certfile)
