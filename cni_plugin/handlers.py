"""The `flannelette` plugin's CNI verbs, each a script of named steps.

ADD: load config -> load subnet.env -> open the pod netns -> check the pod's ifname
-> ensure bridge -> save state (intent) -> setup veth -> ipam add -> configure pod
iface -> save state (with the result) -> result. Every step that changes something
registers its undo on an ExitStack, so an ADD failing anywhere leaves no veth, no
allocation and no state behind; an ADD killed anywhere leaves a state file that
DEL and GC act on.

The handlers are thread-safe: the daemon calls them concurrently on pool threads.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Optional

from conf.cni import Result, load_model, load_result
from conf.dispatch import Handler, Request
from conf.errors import CniError, InvalidConfigError, NotAvailableError
from conf.flannel import load_subnet_env
from conf.plugin import IPAM_TYPE, IpamConf, PluginConf, requested_mac
from conf.steps import mark

from cni_plugin import attachment
from cni_plugin.check import verify_attachment
from cni_plugin.ipam_client import call_ipam, ipam_config
from cni_plugin.plan import bridge_gateways, build_result, effective_mtu, plan_pod
from cni_plugin.podns import host_netlink, netlink_in, pod_netns_fd
from cni_plugin.state import (AttachmentState, list_staging, list_states, load_state, remove_staging,
                              remove_state, save_state)

log = logging.getLogger("flannelette")


def load_conf(req: Request) -> PluginConf:
    return load_model(PluginConf, req.raw)


def _best_effort(what: str, fn: Callable, *args) -> None:
    """An undo step: its failure is logged, never allowed to hide the error being unwound."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - the original error matters more
        log.warning("undo %s failed: %s", what, getattr(e, "msg", e))


def cmd_add(req: Request) -> Result:
    conf = load_conf(req)
    pod_mac = requested_mac(conf, req.env.args)
    subnet_env = load_subnet_env(conf.subnet_file)
    cid, ifname, netns = req.env.container_id, req.env.ifname, req.env.netns
    mtu = effective_mtu(conf, subnet_env)
    host_name = attachment.host_veth_name(cid, ifname)
    ipam_raw = ipam_config(req.raw, conf.ipam, conf.subnet_file)
    if ipam_raw["ipam"].get("type") == IPAM_TYPE:  # refuse a bad IPAM config before cni0 is touched
        load_model(IpamConf, ipam_raw["ipam"], where="ipam")
    mark("load config and subnet.env")
    node_sock = host_netlink()
    with pod_netns_fd(netns, req.netns_fd) as pod_fd, \
            contextlib.closing(netlink_in(pod_fd)) as pod_sock, contextlib.ExitStack() as undo:
        mark("open pod netns")
        attachment.check_pod_ifname_free(node_sock, pod_sock, ifname, host_name, netns)
        mark("check pod ifname")
        bridge = attachment.ensure_bridge(node_sock, conf.bridge, mtu, bridge_gateways(subnet_env))
        mark("ensure bridge")
        # Written ahead of the veth and the address, completed with the result at the end:
        # whatever moment a kill stops this ADD at, GC finds what it made.
        state = AttachmentState(container_id=cid, ifname=ifname, netns=netns, host_veth=host_name,
                                bridge=conf.bridge, ipam=ipam_raw["ipam"], config=req.raw)
        save_state(conf.data_dir, conf.name, state)
        mark("save state (intent)")
        undo.callback(_best_effort, "forget the attachment", remove_state, conf.data_dir, conf.name, cid, ifname)
        host, pod_mac = attachment.setup_veth(node_sock, host_name, ifname, pod_fd, mtu, bridge, conf.hairpin_mode,
                                         pod_mac)
        mark("setup veth")
        undo.callback(_best_effort, f"delete {host_name}", attachment.delete_link, node_sock, host_name)
        ipam_result = call_ipam(req.env, "ADD", ipam_raw) or Result()
        mark("ipam add")
        undo.callback(_best_effort, "ipam DEL", call_ipam, req.env, "DEL", ipam_raw)
        if not ipam_result.ips:
            raise InvalidConfigError(f"IPAM {ipam_raw['ipam'].get('type')} returned no IP address")
        plan = plan_pod(conf, subnet_env, ipam_result)
        _index, kept = attachment.configure_pod_iface(pod_sock, ifname, plan.addresses, plan.routes)
        mark("configure pod iface")
        plan.routes = _without_kept_routes(plan.routes, kept, ifname, netns)
        result = build_result(conf, plan, ipam_result, bridge_mac=bridge.mac, host_veth=host_name,
                              host_mac=host.mac, ifname=ifname, pod_mac=pod_mac, netns=netns, mtu=mtu)
        state.result = result.model_dump(by_alias=True)
        mark("build result")
        save_state(conf.data_dir, conf.name, state)
        mark("save state (result)")
        undo.pop_all()
    mark("close pod netns")
    return result


def _without_kept_routes(routes: list, kept: list, ifname: str, netns: str) -> list:
    """The result lists only routes through `ifname`: one the pod already had through another
    interface (its first attachment's default route) is kept there and left out, as logged."""
    for r in kept:
        log.warning("%s: the pod %s already has a route to %s through another interface; "
                    "keeping it, not adding one via %s", ifname, netns, r.dst, r.gw or ifname)
    return [r for r in routes if r not in kept]


def _saved_or_requested_ipam(req: Request, conf: PluginConf, state: Optional[AttachmentState]) -> dict:
    if state is not None and state.ipam:
        return {**req.raw, "ipam": state.ipam}
    return ipam_config(req.raw, conf.ipam, conf.subnet_file)


def cmd_del(req: Request) -> None:
    """Remove the host veth (its pod end goes with it), release the address, forget the state.

    Needs neither the netns nor subnet.env: the link name is derived from the container
    id and the IPAM config comes from what ADD saved.
    """
    conf = load_conf(req)
    cid, ifname = req.env.container_id, req.env.ifname
    state = load_state(conf.data_dir, conf.name, cid, ifname)
    host_name = state.host_veth if state else attachment.host_veth_name(cid, ifname)
    mark("load config and state")
    attachment.remove_link(host_netlink(), host_name)
    mark("remove veth")
    call_ipam(req.env, "DEL", _saved_or_requested_ipam(req, conf, state))
    mark("ipam del")
    remove_state(conf.data_dir, conf.name, cid, ifname)
    mark("remove state")


def cmd_check(req: Request) -> None:
    conf = load_conf(req)
    if conf.prev_result is None:
        raise InvalidConfigError("invalid network configuration: field 'prevResult' is required for CHECK")
    prev = load_result(conf.prev_result)
    cid, ifname = req.env.container_id, req.env.ifname
    state = load_state(conf.data_dir, conf.name, cid, ifname)
    host_name = state.host_veth if state else attachment.host_veth_name(cid, ifname)
    mark("load config and state")
    with pod_netns_fd(req.env.netns, req.netns_fd) as pod_fd, contextlib.closing(netlink_in(pod_fd)) as pod_sock:
        mark("open pod netns")
        verify_attachment(host_netlink(), pod_sock, prev, bridge=conf.bridge, host_name=host_name, ifname=ifname)
        mark("verify links and addresses")
    call_ipam(req.env, "CHECK", _saved_or_requested_ipam(req, conf, state))
    mark("ipam check")


def cmd_status(req: Request) -> None:
    conf = load_conf(req)
    try:
        load_subnet_env(conf.subnet_file)
    except CniError as e:
        raise NotAvailableError(f"flannelette cannot set up pods: {e.msg}", e.details) from None
    call_ipam(req.env, "STATUS", ipam_config(req.raw, conf.ipam, conf.subnet_file))


def cmd_gc(req: Request) -> None:
    """Remove host veths and state of attachments the runtime no longer knows, then IPAM GC."""
    conf = load_conf(req)
    attachments = conf.gc_attachments()
    if attachments is None:
        raise InvalidConfigError(
            "invalid network configuration: field 'cni.dev/valid-attachments' is required for GC")
    valid = {(a.container_id, a.ifname) for a in attachments}
    node_sock = host_netlink()
    failures: list[CniError] = []
    for cid, ifname in list_staging(conf.data_dir, conf.name):  # a save killed half-way
        if (cid, ifname) not in valid:
            remove_staging(conf.data_dir, conf.name, cid, ifname)
    for state in list_states(conf.data_dir, conf.name):
        if (state.container_id, state.ifname) in valid:
            continue
        try:
            attachment.delete_link(node_sock, state.host_veth)
        except CniError as e:  # keep collecting, like host-local across ranges
            failures.append(e)
            continue
        remove_state(conf.data_dir, conf.name, state.container_id, state.ifname)
    call_ipam(req.env, "GC", ipam_config(req.raw, conf.ipam, conf.subnet_file))
    if failures:
        raise failures[0]


HANDLERS: dict[str, Handler] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "STATUS": cmd_status,
    "GC": cmd_gc,
}
