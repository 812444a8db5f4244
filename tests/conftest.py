import os
import shutil

import pytest

from tests.support.netns import NetNS


def pytest_collection_modifyitems(config, items):
    is_root = os.geteuid() == 0 and shutil.which("ip")
    for item in items:
        path = str(item.fspath)
        if ("/tests/netns/" in path or "/tests/e2e/" in path) and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root and iproute2 for network namespaces"))


@pytest.fixture
def netns():
    """A fresh network namespace, deleted afterwards."""
    ns = NetNS()
    try:
        yield ns
    finally:
        ns.close()
