"""The path doctor: `flannelette doctor --from POD --to ADDRESS` names the first broken hop.

facts.py (the data), hops.py (the pure evaluation), collect.py (reads the node), cli.py.
"""
from daemon.doctor.facts import Iface, LeaseFacts, PathFacts, Probes
from daemon.doctor.hops import Hop, Report, diagnose

__all__ = ["Hop", "Iface", "LeaseFacts", "PathFacts", "Probes", "Report", "diagnose"]
