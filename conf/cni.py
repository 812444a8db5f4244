"""Models of what crosses the CNI boundary: runtime env, network config, results.

Results are kept internally in the newest shape (1.1.0) and rendered for the
version the runtime asked for with `Result.render`; `load_result` reads any
supported version back (a prevResult, or the output of a delegated plugin).
"""
from __future__ import annotations

import ipaddress
import json
import re
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from conf.errors import (
    DecodeError,
    IncompatibleVersionError,
    InvalidConfigError,
    InvalidEnvError,
)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
CONTAINER_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")  # \Z: "$" would accept a trailing newline
NETWORK_NAME_RE = CONTAINER_ID_RE
# The state file "<id>:<ifname>.json" (and its ".<name>.tmp") must fit NAME_MAX (255);
# runtimes use 64 hex digits.
MAX_CONTAINER_ID = 200
MAX_STDIN = 1 << 20  # 1 MiB: no real network config comes close
MAX_DEPTH = 64  # nesting of objects/arrays; real configs use under 10 (a prevResult's routes)


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


def valid_ifname(name: str) -> bool:
    """Linux accepts 1-15 bytes, no '/', no whitespace, not '.' or '..'."""
    return (
        0 < len(name.encode()) <= 15
        and name not in (".", "..")
        and not any(c == "/" or c == ":" or c.isspace() for c in name)
    )


# ---------------------------------------------------------------- runtime env


class RuntimeEnv(BaseModel):
    """The CNI_* environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = Field(default_factory=dict)
    path: list[str] = Field(default_factory=list)


_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
}


def load_env(environ: dict[str, str]) -> RuntimeEnv:
    """Validate CNI_* variables; raises InvalidEnvError (code 4) naming the variable."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise InvalidEnvError("CNI_COMMAND is not set")
    if command not in COMMANDS:
        raise InvalidEnvError(f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    for var in _REQUIRED_ENV.get(command, ()):
        if not environ.get(var):
            raise InvalidEnvError(f"{var} is required for {command} and is not set")
    cid = environ.get("CNI_CONTAINERID", "")
    if cid and not CONTAINER_ID_RE.match(cid):
        raise InvalidEnvError(
            f"CNI_CONTAINERID {cid!r} is invalid: it must start with a letter or digit "
            "and contain only letters, digits, '_', '.' and '-'"
        )
    if len(cid) > MAX_CONTAINER_ID:
        raise InvalidEnvError(f"CNI_CONTAINERID is {len(cid)} characters long, over the limit of {MAX_CONTAINER_ID}")
    ifname = environ.get("CNI_IFNAME", "")
    if ifname and not valid_ifname(ifname):
        raise InvalidEnvError(
            f"CNI_IFNAME {ifname!r} is not a valid interface name "
            "(1-15 characters, no '/', ':' or spaces, not '.' or '..')"
        )
    args: dict[str, str] = {}
    for pair in filter(None, environ.get("CNI_ARGS", "").split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidEnvError(f"CNI_ARGS entry {pair!r} is not KEY=VALUE")
        args[key] = value
    path = [p for p in environ.get("CNI_PATH", "").split(":") if p]
    return RuntimeEnv(
        command=command,
        container_id=cid,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=args,
        path=path,
    )


# ---------------------------------------------------------------- network config


class Dns(BaseModel):
    model_config = ConfigDict(extra="ignore")

    nameservers: list[str] = Field(default_factory=list)
    domain: str = ""
    search: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)

    def render(self) -> dict:
        return self.model_dump(exclude_defaults=True)


class Attachment(BaseModel):
    container_id: str = Field(alias="containerID")
    ifname: str


class NetConf(BaseModel):
    """Fields every plugin gets (the spec's plugin configuration object)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    cni_version: str = Field(alias="cniVersion")
    name: str
    type: str
    args: dict[str, Any] = Field(default_factory=dict)
    runtime_config: dict[str, Any] = Field(default_factory=dict, alias="runtimeConfig")
    prev_result: Optional[dict[str, Any]] = Field(default=None, alias="prevResult")
    ipam: dict[str, Any] = Field(default_factory=dict)
    dns: Dns = Field(default_factory=Dns)
    valid_attachments: Optional[list[Attachment]] = Field(
        default=None, alias="cni.dev/valid-attachments"
    )
    # The spec-v1.1.0 text named the key `cni.dev/attachments`; libcni sends both.
    old_attachments: Optional[list[Attachment]] = Field(default=None, alias="cni.dev/attachments")

    def gc_attachments(self) -> Optional[list[Attachment]]:
        """GC's still-valid attachments; None when the runtime sent neither key."""
        return self.valid_attachments if self.valid_attachments is not None else self.old_attachments

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NETWORK_NAME_RE.match(v):
            raise ValueError("must start with a letter or digit and hold only letters, digits, '_', '.', '-'")
        return v


def check_stdin_size(stdin: bytes) -> None:
    """Code 6 for stdin over MAX_STDIN, before any of it is parsed.

    Executables read at most MAX_STDIN + 1 bytes, so the real size is not known here."""
    if len(stdin) > MAX_STDIN:
        raise DecodeError(f"network configuration on stdin is over the {MAX_STDIN}-byte limit")


def _check_depth(raw: Any) -> None:
    """Iteratively, so a hostile nesting cannot exhaust the stack of whoever walks it later."""
    stack = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth >= MAX_DEPTH:
                    raise DecodeError(f"network configuration on stdin is nested deeper than {MAX_DEPTH} levels")
                stack.append((child, depth + 1))


def decode_config(stdin: bytes) -> dict:
    """stdin bytes -> JSON object; code 6 when it cannot be decoded, 7 without a
    cniVersion, 1 for a version we do not speak."""
    check_stdin_size(stdin)
    try:
        # Decoded here: json.loads(bytes) also takes UTF-16/32 and a byte-order mark; Go's
        # decoder (libcni, the reference plugins) and the shim's do not.
        raw = json.loads(stdin.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DecodeError("network configuration on stdin is not valid JSON", str(e)) from None
    except RecursionError:  # json's own nesting guard (about 1000 levels)
        raise DecodeError(f"network configuration on stdin is nested deeper than {MAX_DEPTH} levels") from None
    if not isinstance(raw, dict):
        raise DecodeError("network configuration on stdin must be a JSON object")
    _check_depth(raw)
    if "cniVersion" not in raw:
        raise InvalidConfigError("invalid network configuration: field 'cniVersion': Field required")
    version = raw["cniVersion"]
    if not isinstance(version, str) or not version:
        raise InvalidConfigError("invalid network configuration: field 'cniVersion': must be a "
                                 f"non-empty string (got {json.dumps(version)[:80]})")
    if version not in SUPPORTED_VERSIONS:
        raise IncompatibleVersionError(
            f"cniVersion {version!r} is not supported; supported: {', '.join(SUPPORTED_VERSIONS)}"
        )
    return raw


def load_model(model: type[BaseModel], raw: dict, where: str = ""):
    """Validate `raw` into `model`; code 7 with a message naming the field."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if where:
            field = f"{where}.{field}" if field else where
        value = err.get("input")
        shown = "" if err["type"] == "missing" else f" (got {json.dumps(value, default=str)[:80]})"
        raise InvalidConfigError(f"invalid network configuration: field {field!r}: {err['msg']}{shown}") from None


# ---------------------------------------------------------------- results


class Interface(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = Field(default="", alias="socketPath")
    pci_id: str = Field(default="", alias="pciID")


class IPConfig(BaseModel):
    address: str  # CIDR: ip/prefix of the subnet
    gateway: str = ""
    interface: Optional[int] = None

    @property
    def interface_address(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)


class Route(BaseModel):
    dst: str
    gw: str = ""
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: Optional[int] = None
    scope: Optional[int] = None

    @field_validator("dst")
    @classmethod
    def _dst(cls, v: str) -> str:
        ipaddress.ip_network(v, strict=False)  # ValueError names the bad text
        return v

    @field_validator("gw")
    @classmethod
    def _gw(cls, v: str) -> str:
        if v:
            ipaddress.ip_address(v)
        return v


class Result(BaseModel):
    """An ADD result in the 1.1.0 shape."""

    interfaces: list[Interface] = Field(default_factory=list)
    ips: list[IPConfig] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    dns: Dns = Field(default_factory=Dns)

    def render(self, cni_version: str) -> dict:
        """The result JSON for `cni_version` (0.3.x/0.4.0 carry ips[].version)."""
        new = version_tuple(cni_version) >= (1, 0, 0)
        v11 = version_tuple(cni_version) >= (1, 1, 0)
        out: dict[str, Any] = {"cniVersion": cni_version}
        if self.interfaces:
            ifs = []
            for i in self.interfaces:
                d: dict[str, Any] = {"name": i.name}
                if i.mac:
                    d["mac"] = i.mac
                if v11 and i.mtu:
                    d["mtu"] = i.mtu
                d["sandbox"] = i.sandbox
                if v11 and i.socket_path:
                    d["socketPath"] = i.socket_path
                if v11 and i.pci_id:
                    d["pciID"] = i.pci_id
                ifs.append(d)
            out["interfaces"] = ifs
        ips = []
        for ip in self.ips:
            d = {}
            if not new:
                d["version"] = "6" if ":" in ip.address else "4"
            d["address"] = ip.address
            if ip.gateway:
                d["gateway"] = ip.gateway
            if ip.interface is not None:
                d["interface"] = ip.interface
            ips.append(d)
        out["ips"] = ips
        if self.routes:
            routes = []
            for r in self.routes:
                d = {"dst": r.dst}
                if r.gw:
                    d["gw"] = r.gw
                if v11:
                    for key in ("mtu", "advmss", "priority"):
                        if getattr(r, key):
                            d[key] = getattr(r, key)
                    for key in ("table", "scope"):
                        if getattr(r, key) is not None:
                            d[key] = getattr(r, key)
                routes.append(d)
            out["routes"] = routes
        out["dns"] = self.dns.render()
        return out


def load_result(raw: dict | None) -> Result:
    """Read a result of any supported version (prevResult, delegate output)."""
    if not raw:
        return Result()
    try:
        data = dict(raw)
        data.pop("cniVersion", None)
        ips = []
        for ip in data.get("ips") or []:
            ip = {k: v for k, v in ip.items() if k != "version"}
            if ip.get("interface", None) is not None and ip["interface"] < 0:
                ip.pop("interface")
            ips.append(ip)
        data["ips"] = ips
        data["interfaces"] = data.get("interfaces") or []
        data["routes"] = data.get("routes") or []
        data["dns"] = data.get("dns") or {}
        return Result.model_validate(data)
    except (ValidationError, TypeError, AttributeError) as e:
        raise InvalidConfigError("prevResult/result is not a valid CNI result", str(e)) from None
