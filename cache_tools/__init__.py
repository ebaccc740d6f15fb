"""The two on-disk caches: the HDF5 clip store (clip_store) and the sharded Zarr target store
(target_store), with their names (names), fingerprints, atomic writes, inspection and errors."""
