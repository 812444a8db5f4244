"""Data plane backends: vxlan (with DirectRouting) and host-gw."""
