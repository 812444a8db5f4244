"""The one seam where etcd client errors become ours (daemon/registry.translate_exception)."""
from __future__ import annotations

import grpc
import pytest
from pyetcd import exceptions as etcd_exc

from daemon.registry import (CompactedError, RegistryAuthError, RegistryError,
                             RegistryUnavailableError, translate_exception)


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
