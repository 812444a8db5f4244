"""The CNI fast path's daemon side: the socket server the lean shim hands requests to."""
