"""The kernel side: leases -> plan -> backend -> kernel, kept level-triggered by the reconcile loop."""
