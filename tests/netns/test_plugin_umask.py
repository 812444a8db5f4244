"""The installed plugin, both paths, leaves nothing world-writable under umask 000."""
from __future__ import annotations

import os

import pytest

from tests.support.cni import world_writable
from tests.support.install import build_artifact

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(autouse=True)
def umask_000():
    """Set before the `cni` fixture starts its fast-path server, which inherits it, as the
    plugin processes do. The cached build is made first, under the usual umask."""
    build_artifact()
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_add_del_gc_create_nothing_world_writable(cni):
    # Deeper than the fixture's dirs: every missing parent is ours to make.
    data_dir, ipam_dir = os.path.join(cni.root, "deep", "plugin"), os.path.join(cni.root, "deep", "ipam")
    conf = dict(dataDir=data_dir, ipam={"type": "flannelette-ipam", "dataDir": ipam_dir})
    pod = cni.pod()
    cni.add(pod, "c-umask", version="1.1.0", **conf)
    created = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(cni.root, "deep")) for f in fs]
    assert any(p.endswith("c-umask:eth0.json") for p in created) and any(p.endswith("10.244.1.2") for p in created)
    assert world_writable(os.path.join(cni.root, "deep")) == []
    assert cni.delete(pod, "c-umask", version="1.1.0", **conf).status == 0
    assert cni.run("GC", cni.conf("1.1.0", **conf, **{"cni.dev/valid-attachments": []})).status == 0
    assert world_writable(os.path.join(cni.root, "deep")) == []
