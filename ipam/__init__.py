"""host-local-style IPAM for flannelette (imports nothing heavy on its own).

Public API:
  ipam.plugin.HANDLERS               CNI verb -> conf.dispatch handler (ADD, DEL, CHECK, GC, STATUS)
  ipam.allocator.Allocator           pure allocator over a Store; make_range_sets, collect_garbage
  ipam.store.Store / Reservation     the storage seam
  ipam.disk_store.DiskStore          host-local's on-disk layout in one directory
  ipam.shared_store                  one such store per subnet, <dataDir>/<network> a link to it
  ipam.fake_store.FakeStore          in-memory store for unit tests
  ipam.main.main                     the `flannelette-ipam` executable
"""
