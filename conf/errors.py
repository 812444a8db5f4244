"""CNI errors: one exception type carrying the spec's error code.

Codes 0-99 are the spec's; plugin codes start at 100. The dispatch turns any
CniError into the error JSON on stdout; anything else becomes 999 (InternalError).
"""
from __future__ import annotations


class CniError(Exception):
    code = 999

    def __init__(self, msg: str, details: str = "", code: int | None = None):
        super().__init__(msg)
        self.msg = msg
        self.details = details
        if code is not None:
            self.code = code

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class IncompatibleVersionError(CniError):
    code = 1


class InvalidEnvError(CniError):
    code = 4


class IOFailureError(CniError):
    code = 5


class DecodeError(CniError):
    code = 6


class InvalidConfigError(CniError):
    code = 7


class InvalidNetnsError(CniError):
    """libcni's ErrInvalidNetNS: CNI_NETNS is not a network namespace."""
    code = 8


class TryAgainError(CniError):
    code = 11


class NotAvailableError(CniError):
    """STATUS: the plugin cannot service ADD now."""
    code = 50


# Plugin-specific codes (100+).

class AddressExhaustedError(CniError):
    code = 100


class AddressUnavailableError(CniError):
    """A requested address is held by another attachment or outside every range."""
    code = 101


class BridgeAddressError(CniError):
    """cni0 carries an address from another subnet (flannel's best-known pain)."""
    code = 102


class InterfaceExistsError(CniError):
    code = 103


class CheckFailedError(CniError):
    code = 104


class DelegateError(CniError):
    """A delegated plugin (IPAM from CNI_PATH) failed; its code is kept when known."""
    code = 105


class InternalError(CniError):
    code = 999
