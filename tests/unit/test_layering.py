"""The layering rules of docs/architecture.md#layering-rules, checked statically over the sources.

conf <- ipam <- cni_plugin, conf <- daemon: conf imports nothing of ours, and neither
cni_plugin nor ipam imports an etcd/grpc client or anything of the daemon. The daemon takes
from cni_plugin only what DAEMON_FROM_CNI_PLUGIN lists; anything else is a new coupling to
argue for here. A guarded package that is missing fails: a checker over nothing proves nothing.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OURS = {"conf", "ipam", "cni_plugin", "daemon", "tests"}
ETCD_CLIENTS = {"pyetcd", "etcd3", "etcd", "grpc", "grpcio"}

# cni_plugin module -> the names daemon/ may import from it (None: the whole module).
DAEMON_FROM_CNI_PLUGIN = {
    # the fast-path wire format, defined once in the shim, which may import nothing of ours
    "cni_plugin.shim": {"MAGIC", "OP_CNI", "OP_STATUS", "REFUSED"},
    # the fast-path server runs the plugin's own handlers, so both paths answer alike
    "cni_plugin.handlers": {"HANDLERS"},
    # one JSON shape of a lease for `flannelette status`; the doctor asks the daemon as it does
    "cni_plugin.status": {"lease_entry", "fetch_report"},
    # the doctor looks into a pod's network namespace as the plugin does
    "cni_plugin.podns": {"open_netns", "netlink_in"},
    # the hand-packed rtnetlink package both sides talk to the kernel with
    "cni_plugin.netlink": None,
}


def sources(package):
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, package)):
        for name in filenames:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def guarded_sources(package):
    found = list(sources(package))
    assert found, f"{package}/ has no sources under {ROOT}: the layering check would pass on nothing"
    return found


def imports(path):
    """(module, name) for every absolute import, lazy ones included; name is None for
    `import module` and for import_module()/__import__() of a constant."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            yield str(node.args[0].value), None


def imported_modules(path):
    """Every absolute module an import statement names."""
    for module, _ in imports(path):
        yield module


def violations(package, forbidden):
    found = []
    for path in guarded_sources(package):
        for module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                found.append(f"{os.path.relpath(path, ROOT)} imports {module}")
    return found


def unlisted_cni_plugin_imports(package, allowed):
    """What `package` imports from cni_plugin beyond `allowed` (see DAEMON_FROM_CNI_PLUGIN)."""
    found = []
    for path in guarded_sources(package):
        where = os.path.relpath(path, ROOT)
        for module, name in imports(path):
            if module.split(".")[0] != "cni_plugin":
                continue
            if module == "cni_plugin" and name is not None:  # `from cni_plugin import netlink`
                module, name = f"cni_plugin.{name}", None
            # a name taken from a listed package (`from cni_plugin.netlink.x import y`) is
            # covered by the package's own entry
            listed = next((m for m in allowed if module == m or module.startswith(m + ".")), None)
            if listed is None:
                found.append(f"{where} imports {module}" + (f".{name}" if name else ""))
            elif allowed[listed] is not None and (module != listed or name not in allowed[listed]):
                found.append(f"{where} imports {module}" + (f".{name}" if name else " whole"))
    return found


def test_conf_imports_nothing_of_ours():
    assert violations("conf", OURS - {"conf"}) == []


@pytest.mark.parametrize("package", ["ipam", "cni_plugin"])
def test_plugins_never_import_etcd_grpc_or_the_daemon(package):
    assert violations(package, ETCD_CLIENTS | {"daemon", "tests"}) == []


def test_ipam_does_not_import_the_cni_plugin():
    assert violations("ipam", {"cni_plugin"}) == []


def test_the_daemon_takes_from_cni_plugin_only_what_is_listed():
    assert unlisted_cni_plugin_imports("daemon", DAEMON_FROM_CNI_PLUGIN) == []


def test_the_checker_sees_lazy_and_dotted_imports(tmp_path, monkeypatch):
    """Guard against a checker that would pass everything."""
    pkg = tmp_path / "fakepkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n    import pyetcd.client\n    from daemon.x import y\n"
                              "    importlib.import_module('grpc')\n")
    monkeypatch.setattr(f"{__name__}.ROOT", str(tmp_path))
    assert sorted(violations("fakepkg", ETCD_CLIENTS | {"daemon"})) == [
        "fakepkg/m.py imports daemon.x", "fakepkg/m.py imports grpc", "fakepkg/m.py imports pyetcd.client"]


def test_the_checker_refuses_what_the_allow_list_does_not_name(tmp_path, monkeypatch):
    pkg = tmp_path / "fakedaemon"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "from cni_plugin.shim import MAGIC, main\n"  # a listed constant and an unlisted function
        "from cni_plugin import netlink, state\n"  # a whole listed package and an unlisted module
        "import cni_plugin.status\n"  # only some names of it are listed
        "from cni_plugin.netlink.codec import pack\n"  # inside a package listed whole
        "def f():\n    from cni_plugin.handlers import cmd_add\n")
    monkeypatch.setattr(f"{__name__}.ROOT", str(tmp_path))
    assert sorted(unlisted_cni_plugin_imports("fakedaemon", DAEMON_FROM_CNI_PLUGIN)) == [
        "fakedaemon/m.py imports cni_plugin.handlers.cmd_add", "fakedaemon/m.py imports cni_plugin.shim.main",
        "fakedaemon/m.py imports cni_plugin.state", "fakedaemon/m.py imports cni_plugin.status whole"]


def test_a_missing_package_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", str(tmp_path))
    with pytest.raises(AssertionError, match="no sources"):
        violations("ipam", {"daemon"})
