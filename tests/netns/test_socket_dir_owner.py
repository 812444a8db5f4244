"""The fast-path socket's directory must be ours: one that belongs to another user is refused.

In a root tier because only root can make a directory that belongs to someone else; the rest
of the socket directory's checks run unprivileged in tests/unit/test_least_privilege.py.
"""
from __future__ import annotations

import os

import pytest

from daemon.fastpath.server import CniServer, UnsafeSocketDirError


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_directory_owned_by_someone_else_is_refused(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(UnsafeSocketDirError, match="belongs to uid 65534"):
        CniServer(str(directory / "cni.sock"), {}).start()
    assert os.listdir(directory) == []
