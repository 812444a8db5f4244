"""Our plugins' own config: the `flannelette` plugin and the `flannelette-ipam` IPAM."""
from __future__ import annotations

import ipaddress
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conf.cni import NetConf, Route, valid_ifname
from conf.errors import InvalidConfigError
from conf.flannel import DEFAULT_SUBNET_FILE

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

IPAM_TYPE = "flannelette-ipam"
DEFAULT_IPAM_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_PLUGIN_DATA_DIR = "/var/lib/cni/flannelette"
DEFAULT_SOCKET = "/run/flannelette/cni.sock"
MIN_MTU = 68  # IPv4's minimum, the lowest a veth or bridge takes


class IpamRange(BaseModel):
    """One range of a range set, host-local's meaning."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    subnet: IPNet
    range_start: Optional[IPAddr] = Field(default=None, alias="rangeStart")
    range_end: Optional[IPAddr] = Field(default=None, alias="rangeEnd")
    gateway: Optional[IPAddr] = None

    @model_validator(mode="after")
    def _check(self) -> "IpamRange":
        net = self.subnet
        if net.num_addresses < 4:
            raise ValueError(f"subnet {net} is too small to allocate from")
        for name in ("range_start", "range_end", "gateway"):
            addr = getattr(self, name)
            if addr is not None and addr not in net:
                raise ValueError(f"{name} {addr} is not inside subnet {net}")
        if self.range_start and self.range_end and self.range_start > self.range_end:
            raise ValueError(f"rangeStart {self.range_start} is after rangeEnd {self.range_end}")
        return self

    @field_validator("subnet", mode="before")
    @classmethod
    def _strict_network(cls, v: Any) -> Any:
        if isinstance(v, str):
            net = ipaddress.ip_network(v, strict=False)
            if str(net.network_address) != v.split("/")[0]:
                raise ValueError(f"subnet {v} has host bits set; did you mean {net}?")
        return v


class IpamConf(BaseModel):
    """The `ipam` object for `flannelette-ipam`."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    type: str = IPAM_TYPE
    subnet_file: str = Field(default=DEFAULT_SUBNET_FILE, alias="subnetFile")
    data_dir: str = Field(default=DEFAULT_IPAM_DATA_DIR, alias="dataDir")
    ranges: list[list[IpamRange]] = Field(default_factory=list)
    routes: Optional[list[Route]] = None
    resolv_conf: Optional[str] = Field(default=None, alias="resolvConf")

    @field_validator("ranges")
    @classmethod
    def _non_empty_sets(cls, v: list[list[IpamRange]]) -> list[list[IpamRange]]:
        for i, rs in enumerate(v):
            if not rs:
                raise ValueError(f"range set {i} is empty")
        return v


class PluginConf(NetConf):
    """The `flannelette` plugin's entry in the conflist."""

    subnet_file: str = Field(default=DEFAULT_SUBNET_FILE, alias="subnetFile")
    data_dir: str = Field(default=DEFAULT_PLUGIN_DATA_DIR, alias="dataDir")
    bridge: str = "cni0"
    mtu: int = Field(default=0, ge=0, le=65535)  # 0: FLANNEL_MTU
    hairpin_mode: bool = Field(default=True, alias="hairpinMode")
    is_default_gateway: bool = Field(default=True, alias="isDefaultGateway")
    daemon_socket: str = Field(default=DEFAULT_SOCKET, alias="daemonSocket")
    ipam: dict[str, Any] = Field(default_factory=lambda: {"type": IPAM_TYPE})

    @field_validator("mtu")
    @classmethod
    def _mtu(cls, v: int) -> int:
        if 0 < v < MIN_MTU:  # the kernel refuses it, after cni0 was already touched
            raise ValueError(f"must be 0 (use FLANNEL_MTU) or {MIN_MTU}-65535, got {v}")
        return v

    @field_validator("bridge")
    @classmethod
    def _bridge(cls, v: str) -> str:
        if not valid_ifname(v):
            raise ValueError(f"{v!r} is not a valid interface name")
        return v

    @field_validator("ipam")
    @classmethod
    def _ipam(cls, v: dict[str, Any]) -> dict[str, Any]:
        if not v:
            return {"type": IPAM_TYPE}
        if not isinstance(v.get("type", IPAM_TYPE), str):
            raise ValueError("ipam.type must be a string")
        return {"type": IPAM_TYPE, **v}


# ---------------------------------------------------------------- a requested MAC

MAC_SOURCES = ("CNI_ARGS MAC", "args.cni.mac", "runtimeConfig.mac")  # later wins, as in `bridge`


def parse_mac(value: Any, field: str) -> str:
    """A unicast, non-zero 48-bit MAC in `aa:bb:cc:dd:ee:ff` or `aa-bb-...` form, lower case."""
    text = value.strip() if isinstance(value, str) else ""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise InvalidConfigError(f"invalid network configuration: field '{field}': {value!r} is not a MAC "
                                 "address (six hex octets like 02:42:ac:11:00:02)")
    raw = bytes.fromhex("".join(parts))
    if raw[0] & 1:
        raise InvalidConfigError(f"invalid network configuration: field '{field}': {text} is a multicast "
                                 "address; an interface needs a unicast MAC (first octet even)")
    if not any(raw):
        raise InvalidConfigError(f"invalid network configuration: field '{field}': the all-zero MAC "
                                 "cannot be an interface's address")
    return raw.hex(":")


def requested_mac(conf: NetConf, env_args: dict[str, str]) -> Optional[str]:
    """The pod MAC asked for, read where the reference `bridge` reads it and with its precedence:
    CNI_ARGS `MAC=` (podman --mac-address), then `args.cni.mac`, then `runtimeConfig.mac` (the
    `mac` capability). Every given value is validated, even one a later source overrides."""
    cni_args = conf.args.get("cni")
    if cni_args is not None and not isinstance(cni_args, dict):
        raise InvalidConfigError("invalid network configuration: field 'args.cni' must be an object")
    values = (env_args.get("MAC"), (cni_args or {}).get("mac"), conf.runtime_config.get("mac"))
    mac = None
    for field, value in zip(MAC_SOURCES, values):
        if value is not None and value != "":
            mac = parse_mac(value, field)
    return mac
