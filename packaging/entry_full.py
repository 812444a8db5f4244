"""Entry of `flannelette-full`, the frozen executable holding the whole in-process stack.

The lean `flannelette` shim execs it (stdin handed over in a memfd) when the daemon cannot
take a request, and for `flannelette status`; `flannelette-ipam` is a symlink to it. Keeping pydantic and our
packages out of the shim's own archive keeps every fast-path start-up small.
"""
import os
import sys


def main() -> None:
    if os.path.basename(sys.argv[0]) == "flannelette-ipam":
        from ipam.main import main as ipam_main
        ipam_main()
    elif sys.argv[1:2] == ["status"]:  # `flannelette status`, handed over by the lean shim
        from cni_plugin.status import main as status_main
        sys.exit(status_main(sys.argv[2:]))
    else:
        from cni_plugin.main import main as plugin_main
        plugin_main()


if __name__ == "__main__":
    main()
