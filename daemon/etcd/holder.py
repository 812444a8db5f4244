"""Which etcd lease of our subnet key this daemon wrote: `<state-dir>/lease-holder.json`.

flannel recognises its own lease by the PublicIP inside it, so two daemons with one public
IP (a cloned VM, a wrong --public-ip) would both take the same key and overwrite each
other's renewals forever. The lease JSON must stay flannel's, so the identity lives
beside it: the etcd lease ID each put of ours used. It is written *before* the put that
uses a new ID (a SIGKILL between the two leaves both IDs recorded), so after a restart a
key whose etcd lease is not in the record was written by someone else.

    {"key": "10.244.5.0-24", "leaseIDs": [7587868497413652234, 7587868497413652301]}
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

from conf.flannel import write_atomic

log = logging.getLogger("flanneletted.holder")

RECORD_NAME = "lease-holder.json"


@dataclass(frozen=True)
class HolderRecord:
    key: str
    lease_ids: tuple[int, ...]

    def wrote(self, key: str, lease_id: int) -> bool:
        """True when the put that gave `key` etcd lease `lease_id` was ours."""
        return key == self.key and lease_id in self.lease_ids


class HolderFile:
    """The record in a state dir; state_dir "" keeps no record (every check passes)."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, RECORD_NAME) if state_dir else ""

    def load(self) -> Optional[HolderRecord]:
        if not self.path:
            return None
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return HolderRecord(str(data["key"]), tuple(int(i) for i in data["leaseIDs"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable lease holder record path=%s error=%s", self.path, e)
            return None

    def save(self, key: str, *lease_ids: int) -> None:
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        body = json.dumps({"key": key, "leaseIDs": [i for i in lease_ids if i]})
        write_atomic(self.path, (body + "\n").encode(), 0o600)


def foreign_holder(record: Optional[HolderRecord], key: str, lease_id: int) -> bool:
    """True when `key`, carrying our public IP on etcd lease `lease_id`, was put by another
    daemon. Without a record (first start, lost state dir, a node moved from flanneld) the
    key is taken as ours, as flannel does; a key without a TTL lease (0: written by hand
    with etcdctl) is never a daemon's."""
    if record is None or lease_id == 0:
        return False
    return not record.wrote(key, lease_id)
