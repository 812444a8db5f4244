"""The `flannelette` CNI plugin: cni0 bridge, veth pair, pod addresses and routes.

Public API (imported lazily, so the lean shim in this package loads none of it):
- HANDLERS: CNI verb -> handler taking a conf.dispatch.Request (for conf.dispatch.run)
- cmd_add, cmd_del, cmd_check, cmd_status, cmd_gc: the handlers themselves
- main: the in-process `flannelette` executable
"""
__all__ = ["HANDLERS", "cmd_add", "cmd_del", "cmd_check", "cmd_status", "cmd_gc", "main"]


def __getattr__(name: str):
    if name == "main":
        from cni_plugin.main import main
        return main
    if name in __all__:
        from cni_plugin import handlers
        return getattr(handlers, name)
    raise AttributeError(f"module 'cni_plugin' has no attribute {name!r}")
