"""flannel's own formats: the network `config` in etcd, lease keys and values, subnet.env.

Kept byte-compatible with flanneld so both can share one etcd and one subnet.env.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from conf.errors import InvalidConfigError, TryAgainError

IPv4Net = ipaddress.IPv4Network
IPv6Net = ipaddress.IPv6Network

DEFAULT_PREFIX = "/coreos.com/network"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
VXLAN_DEFAULT_PORT = 8472
VXLAN_OVERHEAD = 50  # outer IPv4 + UDP + VXLAN + inner Ethernet: flannel's MTU = uplink - 50


# ---------------------------------------------------------------- network config


class BackendConfig(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: str = Field(default="vxlan", alias="Type")
    vni: int = Field(default=1, alias="VNI", ge=0, le=16777215)
    port: int = Field(default=0, alias="Port", ge=0, le=65535)
    mtu: int = Field(default=0, alias="MTU", ge=0)
    direct_routing: bool = Field(default=False, alias="DirectRouting")
    learning: bool = Field(default=False, alias="Learning")
    gbp: bool = Field(default=False, alias="GBP")
    # Outer UDP checksums of the IPv4 VTEP; None keeps the kernel's default (on). Off lets an
    # uplink that can segment VXLAN, but not VXLAN with UDP checksums, segment it in hardware.
    udp_checksum: Optional[bool] = Field(default=None, alias="UDPChecksum")

    @property
    def udp_port(self) -> int:
        return self.port or VXLAN_DEFAULT_PORT


def _first_and_last_subnet(net, length: int):
    first = net.network_address + (1 << (net.max_prefixlen - length))  # skip the first subnet
    last = net.broadcast_address + 1 - (1 << (net.max_prefixlen - length))
    return first, last


class NetworkConfig(BaseModel):
    """`<prefix>/config`, with flanneld's defaults and validation."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    network: Optional[IPv4Net] = Field(default=None, alias="Network")
    enable_ipv4: bool = Field(default=True, alias="EnableIPv4")
    enable_ipv6: bool = Field(default=False, alias="EnableIPv6")
    ipv6_network: Optional[IPv6Net] = Field(default=None, alias="IPv6Network")
    subnet_len: int = Field(default=0, alias="SubnetLen")
    subnet_min: Optional[ipaddress.IPv4Address] = Field(default=None, alias="SubnetMin")
    subnet_max: Optional[ipaddress.IPv4Address] = Field(default=None, alias="SubnetMax")
    ipv6_subnet_len: int = Field(default=0, alias="IPv6SubnetLen")
    ipv6_subnet_min: Optional[ipaddress.IPv6Address] = Field(default=None, alias="IPv6SubnetMin")
    ipv6_subnet_max: Optional[ipaddress.IPv6Address] = Field(default=None, alias="IPv6SubnetMax")
    backend: BackendConfig = Field(default_factory=BackendConfig, alias="Backend")

    @model_validator(mode="after")
    def _defaults(self) -> "NetworkConfig":
        if self.enable_ipv4:
            if self.network is None:
                raise ValueError("Network is required when EnableIPv4 is true")
            self.subnet_len, self.subnet_min, self.subnet_max = _fill(
                self.network, self.subnet_len, self.subnet_min, self.subnet_max, 24, 28, 30, "")
        if self.enable_ipv6:
            if self.ipv6_network is None:
                raise ValueError("IPv6Network is required when EnableIPv6 is true")
            self.ipv6_subnet_len, self.ipv6_subnet_min, self.ipv6_subnet_max = _fill(
                self.ipv6_network, self.ipv6_subnet_len, self.ipv6_subnet_min,
                self.ipv6_subnet_max, 64, 124, 126, "IPv6")
        if not (self.enable_ipv4 or self.enable_ipv6):
            raise ValueError("at least one of EnableIPv4 and EnableIPv6 must be true")
        self.backend.type = self.backend.type.lower()
        return self

    def subnets(self) -> list[IPv4Net]:
        """Every candidate v4 subnet in [SubnetMin, SubnetMax], in order."""
        size = 1 << (32 - self.subnet_len)
        start, end = int(self.subnet_min), int(self.subnet_max)
        return [IPv4Net((a, self.subnet_len)) for a in range(start, end + 1, size)]

    def subnet_usable(self, subnet: IPv4Net) -> bool:
        return (
            subnet.prefixlen == self.subnet_len
            and self.subnet_min <= subnet.network_address <= self.subnet_max
        )


def _fill(net, length, smin, smax, default_len, min_useful, max_len, tag):
    if net.prefixlen > min_useful:
        raise ValueError(f"{tag}Network is too small. Minimum useful network prefix is /{min_useful}")
    if length == 0:
        length = default_len if net.prefixlen <= default_len - 2 else net.prefixlen + 2
    elif length > max_len or length < net.prefixlen + 2:
        raise ValueError(
            f"{tag}SubnetLen {length} must be between /{net.prefixlen + 2} and /{max_len} for {net}")
    first, last = _first_and_last_subnet(net, length)
    smin = smin if smin is not None else first
    smax = smax if smax is not None else last
    block = 1 << (net.max_prefixlen - length)
    for name, addr in ((f"{tag}SubnetMin", smin), (f"{tag}SubnetMax", smax)):
        if addr not in net:
            raise ValueError(f"{name} {addr} is not inside {net}")
        if int(addr) % block:
            raise ValueError(f"{name} {addr} is not aligned to /{length}")
    if smin > smax:
        raise ValueError(f"{tag}SubnetMin {smin} is above {tag}SubnetMax {smax}")
    return length, smin, smax


def load_network_config(text: str | bytes) -> NetworkConfig:
    """Parse `<prefix>/config`; InvalidConfigError names the offending key."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise InvalidConfigError(f"flannel network config is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidConfigError("flannel network config must be a JSON object")
    try:
        return NetworkConfig.model_validate(_case_insensitive(raw, NetworkConfig))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise InvalidConfigError(f"flannel network config: {where}: {err['msg']}") from None


def _case_insensitive(raw: dict, model: type[BaseModel]) -> dict:
    """flanneld decodes with Go's case-insensitive JSON; map keys onto our aliases."""
    aliases = {(f.alias or n).lower(): (f.alias or n) for n, f in model.model_fields.items()}
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = aliases.get(k.lower(), k)
        if key == "Backend" and isinstance(v, dict):
            v = _case_insensitive(v, BackendConfig)
        out[key] = v
    return out


# ---------------------------------------------------------------- lease keys and values

_KEY_RE = re.compile(r"^(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?\Z")  # \Z: no trailing newline


def make_subnet_key(v4: Optional[IPv4Net], v6: Optional[IPv6Net] = None) -> str:
    """`10.244.1.0/24` -> `10.244.1.0-24`; dual stack appends `&fc00::-64`."""
    parts = []
    if v4 is not None:
        parts.append(f"{v4.network_address}-{v4.prefixlen}")
    if v6 is not None:
        parts.append(f"{v6.network_address}-{v6.prefixlen}")
    return "&".join(parts)


def last_address_int(net) -> int:
    """int(net.broadcast_address) without computing the property: ipaddress caches it (an
    address object and an instance __dict__, about 190 bytes) on every lease subnet asked,
    a megabyte at 5000 leases kept as long as the lease."""
    return int(net.network_address) | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


def net_inside(inner, outer) -> bool:
    """inner.subnet_of(outer), the same way allocation-free (see last_address_int)."""
    if inner.version != outer.version or inner.prefixlen < outer.prefixlen:
        return False
    shift = outer.max_prefixlen - outer.prefixlen
    return int(inner.network_address) >> shift == int(outer.network_address) >> shift


def parse_subnet_key(key: str) -> tuple[IPv4Net, Optional[IPv6Net]]:
    m = _KEY_RE.match(key.rsplit("/", 1)[-1])
    if not m:
        raise ValueError(f"not a flannel subnet key: {key!r}")
    v4 = IPv4Net(f"{m.group(1)}/{m.group(2)}")
    v6 = IPv6Net(f"{m.group(3)}/{m.group(4)}") if m.group(3) else None
    return v4, v6


class VxlanData(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    vni: int = Field(default=1, alias="VNI")
    vtep_mac: str = Field(default="", alias="VtepMAC")


class LeaseAttrs(BaseModel):
    """The JSON value of `<prefix>/subnets/<key>` (flannel's LeaseAttrs)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    public_ip: ipaddress.IPv4Address = Field(alias="PublicIP")
    public_ipv6: Optional[ipaddress.IPv6Address] = Field(default=None, alias="PublicIPv6")
    backend_type: str = Field(default="", alias="BackendType")
    backend_data: Optional[dict[str, Any]] = Field(default=None, alias="BackendData")
    backend_v6_data: Optional[dict[str, Any]] = Field(default=None, alias="BackendV6Data")

    def dump_json(self) -> str:
        out: dict[str, Any] = {"PublicIP": str(self.public_ip),
                               "PublicIPv6": str(self.public_ipv6) if self.public_ipv6 else None}
        if self.backend_type:
            out["BackendType"] = self.backend_type
        if self.backend_data is not None:
            out["BackendData"] = self.backend_data
        if self.backend_v6_data is not None:
            out["BackendV6Data"] = self.backend_v6_data
        return json.dumps(out, separators=(",", ":"))

    @property
    def vxlan(self) -> Optional[VxlanData]:
        return VxlanData.model_validate(self.backend_data) if self.backend_data else None


class Lease(BaseModel):
    """One node's lease as seen in etcd."""

    subnet: IPv4Net
    ipv6_subnet: Optional[IPv6Net] = None
    attrs: LeaseAttrs
    expiration: float = 0.0  # unix time; 0 for a reservation without TTL

    @property
    def key(self) -> str:
        return make_subnet_key(self.subnet, self.ipv6_subnet)


def load_lease(key: str, value: bytes | str, expiration: float = 0.0) -> Lease:
    v4, v6 = parse_subnet_key(key)
    return Lease(subnet=v4, ipv6_subnet=v6, attrs=LeaseAttrs.model_validate_json(value),
                 expiration=expiration)


# ---------------------------------------------------------------- subnet.env


class SubnetEnv(BaseModel):
    """`/run/flannel/subnet.env`; FLANNEL_SUBNET holds the bridge address (.1/len)."""

    networks: list[IPv4Net] = Field(default_factory=list)
    subnet: Optional[ipaddress.IPv4Interface] = None
    ipv6_networks: list[IPv6Net] = Field(default_factory=list)
    ipv6_subnet: Optional[ipaddress.IPv6Interface] = None
    mtu: int
    ipmasq: bool

    def render(self) -> str:
        lines = []
        if self.networks:
            lines.append("FLANNEL_NETWORK=" + ",".join(map(str, self.networks)))
        if self.subnet:
            lines.append(f"FLANNEL_SUBNET={self.subnet}")
        if self.ipv6_networks:
            lines.append("FLANNEL_IPV6_NETWORK=" + ",".join(map(str, self.ipv6_networks)))
        if self.ipv6_subnet:
            lines.append(f"FLANNEL_IPV6_SUBNET={self.ipv6_subnet}")
        lines.append(f"FLANNEL_MTU={self.mtu}")
        lines.append(f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}")
        return "\n".join(lines) + "\n"


def parse_subnet_env(text: str, where: str = "subnet.env") -> SubnetEnv:
    """Parse subnet.env text; InvalidConfigError names the missing or bad variable."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise InvalidConfigError(f"{where}: line {line[:60]!r} is not KEY=VALUE")
        values[key.strip()] = value.strip().strip('"')
    def parsed(key: str, kind: Any) -> Any:
        try:
            return kind(values[key]) if values.get(key) else None
        except ValueError as e:
            raise InvalidConfigError(f"{where}: {key}={values[key]!r} is invalid: {e}") from None

    def parsed_list(key: str, kind: Any) -> list:
        return [parsed(key, lambda _v, n=n: kind(n)) for n in filter(None, values.get(key, "").split(","))]

    networks = parsed_list("FLANNEL_NETWORK", IPv4Net)
    v6nets = parsed_list("FLANNEL_IPV6_NETWORK", IPv6Net)
    subnet = parsed("FLANNEL_SUBNET", ipaddress.IPv4Interface)
    v6sub = parsed("FLANNEL_IPV6_SUBNET", ipaddress.IPv6Interface)
    if not networks and not v6nets:
        raise InvalidConfigError(f"{where} is missing FLANNEL_NETWORK")
    if subnet is None and v6sub is None:
        raise InvalidConfigError(f"{where} is missing FLANNEL_SUBNET")
    if "FLANNEL_MTU" not in values:
        raise InvalidConfigError(f"{where} is missing FLANNEL_MTU")
    if "FLANNEL_IPMASQ" not in values:
        raise InvalidConfigError(f"{where} is missing FLANNEL_IPMASQ")
    try:
        mtu = int(values["FLANNEL_MTU"])
    except ValueError:
        raise InvalidConfigError(f"{where}: FLANNEL_MTU {values['FLANNEL_MTU']!r} is not a number") from None
    if not 68 <= mtu <= 65535:
        raise InvalidConfigError(f"{where}: FLANNEL_MTU {mtu} is out of range 68-65535")
    ipmasq = values["FLANNEL_IPMASQ"].lower()
    if ipmasq not in ("true", "false"):
        raise InvalidConfigError(f"{where}: FLANNEL_IPMASQ {ipmasq!r} is not true or false")
    if subnet is not None and not any(subnet.network.subnet_of(n) for n in networks):
        raise InvalidConfigError(f"{where}: FLANNEL_SUBNET {subnet} is not inside FLANNEL_NETWORK")
    return SubnetEnv(networks=networks, subnet=subnet, ipv6_networks=v6nets, ipv6_subnet=v6sub,
                     mtu=mtu, ipmasq=ipmasq == "true")


def load_subnet_env(path: str) -> SubnetEnv:
    """Read subnet.env; a missing file is TryAgainError (11): flanneletted has not written it yet."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise TryAgainError(
            f"{path} does not exist: flanneletted has not written it yet on this node "
            "(is the flanneletted service running? check its log)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TryAgainError(f"cannot read {path}: {e}") from None
    return parse_subnet_env(text, path)


def write_subnet_env(path: str, env: SubnetEnv) -> None:
    """Atomic write (temp file in the same dir, fsync, rename), mode 0644 as flanneld."""
    write_atomic(path, env.render().encode(), 0o644)


def write_atomic(path: str, data: bytes, mode: int = 0o644, sync: bool = True) -> None:
    """Readers see the old or the new file, never a part; `sync=False` skips the fsync
    for files whose loss in a crash is harmless (they cost ms on a slow disk)."""
    directory = os.path.dirname(path) or "."
    ensure_dir(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


def ensure_dir(path: str, mode: int = 0o755) -> None:
    """makedirs whose new directories get exactly `mode` whatever the umask: makedirs
    gives parents 0777 minus the umask, world-writable under a umask of 000."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path.rstrip("/"))
    if parent and parent != path:
        ensure_dir(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return  # made by someone else meanwhile: theirs to set
    os.chmod(path, mode)
