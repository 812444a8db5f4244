"""attachment.remove_link (DEL): returns once the link has left the netns, reports refusals."""
import os
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from cni_plugin import attachment
    from cni_plugin.podns import host_netlink
    from conf.errors import CniError
    node_sock = host_netlink()
    assert attachment.remove_link(node_sock, "flt-veth-a") is True
    assert attachment.get_link(node_sock, "flt-veth-a") is None and attachment.get_link(node_sock, "flt-veth-b") is None
    assert attachment.remove_link(node_sock, "flt-veth-a") is False  # already gone: DEL succeeds
    try:
        attachment.remove_link(node_sock, "lo")  # the kernel never deletes lo
    except CniError as e:
        print("refused:", e.msg)
    assert attachment.get_link(node_sock, "lo") is not None
""")


@pytest.mark.timeout(60)
def test_remove_link_takes_the_pair_away_and_reports_a_refusal(netns):
    netns.run("ip", "link", "add", "flt-veth-a", "type", "veth", "peer", "name", "flt-veth-b")
    out = netns.run(sys.executable, "-c", SCRIPT, ROOT).stdout.decode()
    assert out.startswith("refused: deleting lo:")
    assert "flt-veth" not in netns.out("ip", "link")
