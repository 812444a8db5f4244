"""The one seam where etcd client errors become ours (daemon/registry.translate_exception)."""
from __future__ import annotations

import grpc
import pytest
from pyetcd import exceptions as etcd_exc

from daemon.etcd.registry import (CompactedError, Registry,
                             RegistryAuthError, RegistryError, RegistryUnavailableError,
                             translate_exception)
from daemon.settings import parse_settings


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


def wrapped(rpc: FakeRpcError) -> Exception:
    """What pyetcd raises for a mapped code: its own exception, the grpc error as context."""
    try:
        try:
            raise rpc
        except grpc.RpcError:
            raise etcd_exc.ConnectionFailedError()
    except etcd_exc.ConnectionFailedError as e:
        return e


@pytest.mark.parametrize("code,details,kind,needle", [
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", RegistryUnavailableError,
     "failed to connect"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "", RegistryUnavailableError, "DEADLINE_EXCEEDED"),
    (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password",
     RegistryAuthError, "authentication failed"),
    (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", RegistryAuthError,
     "permission denied"),
    (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token", RegistryAuthError, "invalid auth token"),
    (grpc.StatusCode.UNAVAILABLE, "Tls handshake failed (TSI_PROTOCOL_FAILURE)", RegistryUnavailableError,
     "check --etcd-cafile"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", RegistryError,
     "database space exceeded"),
])
def test_grpc_errors_become_ours_with_their_reason(code, details, kind, needle):
    for exc in (FakeRpcError(code, details), wrapped(FakeRpcError(code, details))):
        ours = translate_exception(exc)
        assert type(ours) is kind and needle in str(ours)


def test_compaction_and_client_side_errors():
    assert translate_exception(etcd_exc.RevisionCompactedError(41)).compact_revision == 41
    assert isinstance(translate_exception(etcd_exc.RevisionCompactedError(41)), CompactedError)
    assert isinstance(translate_exception(etcd_exc.NoServerAvailableError("none")),
                      RegistryUnavailableError)
    assert isinstance(translate_exception(etcd_exc.WatchTimedOut()), RegistryUnavailableError)


def _registry(endpoints: str) -> Registry:
    return Registry(parse_settings(["--etcd-endpoints", endpoints], {}))


def test_no_endpoint_answering_is_one_round_over_the_endpoints_not_one_per_retry():
    reg = _registry("http://10.0.0.1:2379,http://10.0.0.2:2379,http://10.0.0.3:2379")
    rounds = []

    def connect():
        rounds.append(1)
        raise RegistryUnavailableError("10.0.0.1: refused; 10.0.0.2: refused; 10.0.0.3: refused")

    reg._connect = connect
    with pytest.raises(RegistryUnavailableError):
        reg.get_config()
    assert len(rounds) == 1


def test_a_dead_endpoint_is_retried_on_the_next_within_one_call():
    reg = _registry("http://10.0.0.1:2379,http://10.0.0.2:2379")
    answers = [FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused"), (b"{}", None)]

    class Client:
        def get(self, key):
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    reg._connect = Client
    assert reg.get_config() == b"{}" and answers == []

