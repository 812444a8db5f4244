"""Every data plane backend offers the Backend Protocol's methods with its parameters, and
the factory builds each from the same three arguments."""
from __future__ import annotations

import inspect

import pytest

from conf.flannel import load_network_config
from daemon.dataplane.backend import Backend, DataplaneError
from daemon.dataplane.backends import make_backend
from daemon.dataplane.backends.alloc import AllocBackend
from daemon.dataplane.backends.hostgw import HostGwBackend
from daemon.dataplane.backends.vxlan import VxlanBackend
from daemon.dataplane.node import NodeInfo

METHODS = [name for name, value in vars(Backend).items()
           if inspect.isfunction(value) and not name.startswith("_")]


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_the_protocol_names_the_six_calls_the_daemon_makes():
    assert sorted(METHODS) == ["close", "configure", "prepare", "programmed", "reconcile",
                               "watch_kernel"]


@pytest.mark.parametrize("cls", [VxlanBackend, HostGwBackend, AllocBackend])
def test_each_backend_has_every_method_of_the_protocol_with_its_parameters(cls):
    for name in METHODS:
        assert params(getattr(cls, name)) == params(getattr(Backend, name)), (cls, name)
    assert params(cls.__init__) == ["self", "netconf", "node", "state_dir"]


def test_alloc_is_built_by_the_factory_and_programs_nothing():
    node = NodeInfo("eth0", 2, "192.0.2.7", iface_mtu=1400, iface_ip="192.0.2.7")
    backend = make_backend(load_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}'),
                           node, "")
    assert isinstance(backend, AllocBackend) and backend.mtu == 1400
    assert backend.prepare().backend_type == "alloc"
    assert backend.watch_kernel(lambda: None) is None


def test_an_unknown_backend_type_is_a_dataplane_error():
    node = NodeInfo("eth0", 2, "192.0.2.7")
    with pytest.raises(DataplaneError, match="'udp' is not supported"):
        make_backend(load_network_config('{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}'),
                     node, "")
