"""The etcd side: the registry (flannel's key layout), this node's lease and every peer's."""
