"""Shared test helpers: throwaway network namespaces and a real etcd."""
