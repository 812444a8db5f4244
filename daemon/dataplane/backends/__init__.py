"""Data plane backends: vxlan (with DirectRouting), host-gw and alloc; `make_backend` picks one."""
from __future__ import annotations

from conf.flannel import NetworkConfig
from daemon.dataplane.backend import Backend, DataplaneError
from daemon.dataplane.node import NodeInfo


def make_backend(netconf: NetworkConfig, node: NodeInfo, state_dir: str) -> Backend:
    """The backend `Backend.Type` names; each is imported only when chosen."""
    kind = netconf.backend.type
    if kind == "vxlan":
        from daemon.dataplane.backends.vxlan import VxlanBackend as chosen
    elif kind == "host-gw":
        from daemon.dataplane.backends.hostgw import HostGwBackend as chosen
    elif kind == "alloc":
        from daemon.dataplane.backends.alloc import AllocBackend as chosen
    else:
        raise DataplaneError(f"Backend.Type {kind!r} is not supported (use vxlan, host-gw or alloc)")
    return chosen(netconf, node, state_dir)
