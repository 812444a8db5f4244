"""flanneletted: hold this node's subnet lease in etcd and keep the data plane in line.

Phases, in flanneld's order: settings -> health server -> etcd -> network config
(waits while absent) -> interface -> backend prepare -> lease -> backend configure ->
masquerade -> subnet.env (ready) -> watch + reconcile -> CNI fast path -> keep the lease.
One shutdown path (SIGTERM/SIGINT): stop our threads and leave the data plane and the
lease as they are, so a restart loses no packet.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional

from conf.daemon import DaemonSettings
from conf.errors import CniError
from conf.flannel import Lease, NetworkConfig, SubnetEnv, load_network_config, load_subnet_env, write_subnet_env
from daemon.health import HealthServer
from daemon.etcd.keeper import LeaseKeeper
from daemon.etcd.leases import DuplicateHolderError, LeaseError, LeaseLostError, LeaseManager
from daemon.logs import setup_logging
from daemon.memory import limit_arenas
from daemon.metrics import Metrics
from daemon.dataplane.reconcile import Reconciler
from daemon.etcd.registry import Registry, RegistryAuthError, RegistryError, RegistryUnavailableError
from daemon.settings import SettingsError, parse_settings
from daemon.status import ExpiryCache, build_report
from daemon.etcd.watch import LeaseWatcher

if TYPE_CHECKING:
    from daemon.dataplane.backend import Backend, KernelWatchHandle
    from daemon.dataplane.node import NodeInfo

log = logging.getLogger("flanneletted")

CONFIG_RETRY = 1.0  # seconds between reads of a missing network config (flanneld: 1 s)
DUPLICATE_RETRY = 10.0  # seconds between looks at a subnet another daemon with our IP holds


class FatalError(Exception):
    """Stops the daemon; str() is the one line printed for the operator."""


class StopRequestedError(Exception):
    """SIGTERM/SIGINT arrived while a startup phase was waiting: unwinds to run()."""


class Daemon:
    def __init__(self, settings: DaemonSettings):
        self.settings = settings
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.health = HealthServer(str(settings.healthz_ip), settings.healthz_port,
                                   self.metrics, self.ready)
        self.registry: Optional[Registry] = None
        self.config: Optional[NetworkConfig] = None
        self.backend: Optional[Backend] = None
        self.leases: Optional[LeaseManager] = None
        self.keeper: Optional[LeaseKeeper] = None
        self.watcher: Optional[LeaseWatcher] = None
        self.reconciler: Optional[Reconciler] = None
        self.cni_server = None
        self._kernel_watch: Optional[KernelWatchHandle] = None
        self._expiry: Optional[ExpiryCache] = None
        self.mesh = None

    # ------------------------------------------------------------ phases

    def run(self) -> int:
        try:
            self.start_health()
            self.registry = Registry(self.settings)
            self._expiry = ExpiryCache(self.registry)
            self.connect_etcd()
            self.config = self.wait_for_config()
            node = self.select_node()
            self.backend = self.make_backend(node)
            attrs = self._dataplane("prepare the data plane", self.backend.prepare)
            self.make_lease_manager()
            previous = self._old_subnet_env()
            own = self.acquire_lease(attrs, previous)
            self._lease_changed(own)
            self._dataplane("configure the data plane", lambda: self.backend.configure(own))
            self.check_previous_subnet(previous, own)
            masquerade = self._dataplane("install masquerade rules", lambda: self.setup_masquerade(own))
            self.write_subnet_env(own)
            self.start_loops(masquerade)
            self.start_cni_server()
            self.keeper.run()  # until SIGTERM/SIGINT
            return 0
        except StopRequestedError:
            return 0
        except (RegistryError, LeaseError) as e:
            raise FatalError(str(e)) from None
        finally:
            self.shutdown()

    def start_health(self) -> None:
        try:
            self.health.start()
        except OSError as e:
            raise FatalError(f"cannot serve /healthz on {self.settings.healthz_ip}:"
                             f"{self.settings.healthz_port}: {e.strerror}") from None

    def connect_etcd(self) -> None:
        """Reach etcd within --etcd-dial-timeout, else give up with one line."""
        deadline = time.monotonic() + self.settings.etcd_dial_timeout
        endpoints = ",".join(map(str, self.settings.etcd_endpoints))
        while True:
            try:
                self.registry.check()
                log.info("connected to etcd endpoints=%s", endpoints)
                return
            except RegistryAuthError as e:
                raise FatalError(f"etcd at {endpoints} refused our credentials: {e}") from None
            except RegistryError as e:
                if time.monotonic() >= deadline:
                    raise FatalError(f"cannot reach etcd at {endpoints}: {e}") from None
            self._sleep(0.5)

    def wait_for_config(self) -> NetworkConfig:
        key, said = self.registry.config_key, None
        while True:
            raw = self._retrying("read network config", self.registry.get_config)
            if raw is None:
                news = f"network config not found in etcd, waiting key={key}"
            else:
                try:
                    config = load_network_config(raw)
                    log.info("network config network=%s backend=%s ipv6=%s", config.network,
                             config.backend.type, config.ipv6_network)
                    return config
                except CniError as e:
                    news = f"network config is invalid, waiting for a fix key={key} error={e.msg!r}"
            if news != said:
                log.warning(news)
                said = news
            self._sleep(CONFIG_RETRY)

    def select_node(self) -> NodeInfo:
        from daemon.dataplane.backend import DataplaneError
        from daemon.dataplane.node import select_node
        try:
            node = select_node(self.settings, self.config)
        except DataplaneError as e:
            raise FatalError(str(e)) from None
        log.info("using interface iface=%s public_ip=%s public_ipv6=%s mtu=%d", node.iface,
                 node.public_ip, node.public_ipv6, node.iface_mtu)
        return node

    def make_backend(self, node: NodeInfo) -> Backend:
        from daemon.dataplane.backend import DataplaneError
        from daemon.dataplane.backends import make_backend
        try:
            return make_backend(self.config, node, self.settings.state_dir)
        except DataplaneError as e:
            raise FatalError(str(e)) from None

    def make_lease_manager(self) -> None:
        """The LeaseManager (how to hold a lease) and the LeaseKeeper (when)."""
        s = self.settings
        self.leases = LeaseManager(
            self.registry, self.config, s.lease_ttl, s.renew_margin_seconds,
            state_dir=s.state_dir,
            on_reject=lambda reason: self.metrics.inc("leases_rejected_total", reason=reason))
        self.keeper = LeaseKeeper(self.leases, self.metrics, s.lease_ttl, self.stopping,
                                  on_held=self._lease_changed, on_lost=self.move_subnet)

    def acquire_lease(self, attrs, previous: Optional[SubnetEnv]) -> Lease:
        """The lease; while another daemon with our public IP holds ours, wait unready
        (an ERROR line, the metric duplicate_public_ip = 1) instead of fighting over it."""
        said = ""
        while True:
            try:
                own = self._retrying("acquire lease", lambda: self.leases.acquire(attrs, previous))
            except DuplicateHolderError as e:
                if str(e) != said:
                    log.error("not taking the subnet: %s", e)
                    said = str(e)
                self.metrics.set("duplicate_public_ip", 1)
                self._sleep(DUPLICATE_RETRY)
                continue
            self.metrics.set("duplicate_public_ip", 0)
            return own

    def _old_subnet_env(self) -> Optional[SubnetEnv]:
        try:
            return load_subnet_env(self.settings.subnet_file)
        except CniError:
            return None

    def setup_masquerade(self, own: Lease):
        if not self.settings.ip_masq:
            return None
        from daemon.dataplane.masquerade import Masquerade
        masq = Masquerade(self.config, own, iptables_mode=self.settings.iptables_mode)
        if masq.check():  # a restart: rewriting would flush the chains and zero their counters
            log.info("masquerade rules already in place, kept")
        else:
            masq.ensure()
            log.info("masquerade rules installed")
        return masq

    def write_subnet_env(self, own: Lease) -> None:
        c = self.config
        env = SubnetEnv(
            networks=[c.network] if c.enable_ipv4 else [],
            subnet=f"{own.subnet.network_address + 1}/{own.subnet.prefixlen}",
            ipv6_networks=[c.ipv6_network] if c.enable_ipv6 else [],
            ipv6_subnet=(f"{own.ipv6_subnet.network_address + 1}/{own.ipv6_subnet.prefixlen}"
                         if own.ipv6_subnet else None),
            mtu=self.backend.mtu, ipmasq=self.settings.ip_masq)
        write_subnet_env(self.settings.subnet_file, env)
        self.ready.set()
        self.metrics.set("ready", 1)
        log.info("wrote subnet.env path=%s subnet=%s mtu=%d", self.settings.subnet_file,
                 env.subnet, env.mtu)

    def start_loops(self, masquerade) -> None:
        self.reconciler = Reconciler(self.backend, lambda: self.leases.own, self._peers,
                                     self.metrics, self.settings.reconcile_interval, masquerade)
        self.watcher = LeaseWatcher(self.registry, self.metrics,
                                    on_change=lambda: self.reconciler.trigger("etcd"),
                                    own_key=lambda: self.leases.own.key if self.leases.own else None,
                                    on_own_key=self.keeper.own_key_touched, config=self.config)
        if self.leases.listing is not None:  # acquisition's listing: no need to list twice
            self.watcher.load_snapshot(*self.leases.listing)
            self.leases.listing = None
        self.reconciler.start()
        self.watcher.start()
        self._kernel_watch = self.backend.watch_kernel(lambda: self.reconciler.trigger("kernel"))
        self.start_mesh()

    def start_mesh(self) -> None:
        s = self.settings
        if not s.health_probe_rate or self.config.backend.type == "alloc":
            return
        from daemon.mesh import HealthMesh
        self.mesh = HealthMesh(self._peers, lambda: self.leases.own, self.metrics,
                               s.health_probe_rate, s.health_probe_interval)
        self.mesh.start()

    def _peers(self) -> list[Lease]:
        return [k.lease for k in self.watcher.leases()]

    def start_cni_server(self) -> None:
        path = self.settings.cni_socket
        if not path:
            return
        from cni_plugin.handlers import HANDLERS
        from daemon.fastpath.server import CniServer, UnsafeSocketDirError
        self.cni_server = CniServer(path, HANDLERS, status_provider=self.status_report)
        try:
            self.cni_server.start()
        except UnsafeSocketDirError as e:  # pods still start: the plugin runs requests itself
            self.metrics.inc("errors_total", where="cni_socket")
            log.error("serving no CNI fast path error=%s", e)
            self.cni_server = None
            return
        log.info("serving the CNI fast path socket=%s", path)

    def status_report(self) -> dict:
        watcher = self.watcher
        return build_report(self.config, self.leases.own if self.leases else None,
                            watcher.leases() if watcher else [], self.backend.programmed,
                            self._expiry, self.ready.is_set(),
                            bool(watcher and watcher.connected), watcher.revision if watcher else 0,
                            self.mesh.reachable if self.mesh else None)

    # ------------------------------------------------------------ when our lease changes or moves

    def check_previous_subnet(self, previous: Optional[SubnetEnv], own: Lease) -> None:
        """At start: subnet.env named another subnet (ours expired while we were down and
        another node took it, or the config changed): say so and move cni0's gateway."""
        from daemon.dataplane.subnet_move import why_not_previous
        old = previous.subnet.network if previous is not None and previous.subnet else None
        if old is not None and old != own.subnet:
            self.follow_new_subnet(old, own, why_not_previous(self.leases.listing, old))

    def follow_new_subnet(self, old, own: Lease, why: str) -> None:
        """The one WARNING line, the metric, and cni0's gateway moved to the new subnet."""
        from daemon.dataplane.subnet_move import follow_new_subnet
        self.metrics.inc("subnet_moves_total")
        self._dataplane(f"move the gateway of {self.settings.cni_bridge}",
                        lambda: follow_new_subnet(self.config, self.settings.cni_bridge, old,
                                                  own, why))

    def move_subnet(self, lost: LeaseLostError) -> Lease:
        """Running, our subnet went to another node: take a new one and follow it."""
        old = self.leases.own
        own = self._retrying("acquire a new lease", self.leases.reacquire)
        self._dataplane("configure the data plane", lambda: self.backend.configure(own))
        self.follow_new_subnet(old.subnet, own, str(lost))
        if self.reconciler is not None and self.reconciler.masquerade is not None:
            self.reconciler.masquerade = None  # its tick must not restore the old subnet's rules
            self.reconciler.masquerade = self._dataplane("install masquerade rules",
                                                         lambda: self.setup_masquerade(own))
        self.write_subnet_env(own)
        return own

    def _lease_changed(self, own: Lease) -> None:
        self.metrics.set("lease_expiration_timestamp_seconds", own.expiration)
        if self.reconciler is not None:
            self.reconciler.trigger("lease")

    # ------------------------------------------------------------ plumbing

    def _retrying(self, what: str, fn: Callable):
        """Run fn, riding out etcd outages with backoff; other errors go up."""
        delay = 0.5
        while True:
            try:
                return fn()
            except RegistryAuthError as e:
                raise FatalError(f"etcd refused {what}: {e}") from None
            except RegistryUnavailableError as e:
                log.warning("etcd unavailable, retrying what=%r seconds=%.1f error=%s", what, delay, e)
                self.metrics.inc("errors_total", where="etcd")
                self.registry.reset()
            except DuplicateHolderError:
                raise  # acquire_lease waits on it
            except LeaseError as e:
                raise FatalError(str(e)) from None
            self._sleep(delay)
            delay = min(delay * 2, 5.0)

    def _dataplane(self, what: str, fn: Callable):
        """Kernel or iptables work at startup: a failure stops us with one line."""
        from daemon.dataplane.backend import DataplaneError
        from daemon.dataplane.masquerade import MasqueradeError
        try:
            return fn()
        except (DataplaneError, MasqueradeError, OSError) as e:
            log.exception("cannot %s", what)
            raise FatalError(f"cannot {what}: {e}") from None

    def _sleep(self, seconds: float) -> None:
        if self.stopping.wait(seconds):
            raise StopRequestedError()

    def stop(self, *_signal) -> None:
        self.stopping.set()
        if self.keeper is not None:
            self.keeper.wake()

    def shutdown(self) -> None:
        """Stop our threads; the data plane, subnet.env and the lease stay as they are."""
        for name, stop in (("cni server", self.cni_server and self.cni_server.stop),
                           ("health mesh", self.mesh and self.mesh.stop),
                           ("kernel watch", self._kernel_watch and self._kernel_watch.stop),
                           ("watcher", self.watcher and self.watcher.stop),
                           ("reconciler", self.reconciler and self.reconciler.stop),
                           ("health", self.health.stop),
                           ("etcd", self.registry and self.registry.close)):
            if stop:
                try:
                    stop()
                except Exception:
                    log.exception("stopping %s failed", name)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["doctor"]:  # `flannelette doctor` lands here (cni_plugin/shim.py): reads only
        from daemon.doctor.cli import main as doctor_main
        return doctor_main(args[1:])
    limit_arenas()  # before any thread starts (daemon.memory)
    try:
        settings = parse_settings(args, os.environ)
    except SettingsError as e:
        print(f"flanneletted: {e}", file=sys.stderr)
        return 2
    setup_logging(settings.v)
    daemon = Daemon(settings)
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGINT, daemon.stop)
    try:
        code = daemon.run()
    except FatalError as e:
        print(f"flanneletted: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: the traceback goes to the log, one line to the operator
        log.exception("unexpected error")
        print(f"flanneletted: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    log.info("stopped; data plane and lease left in place")
    return code


if __name__ == "__main__":
    sys.exit(main())
