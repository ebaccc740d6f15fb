"""The two on-disk caches: the HDF5 clip store and the sharded Zarr target store."""
from cache_tools.errors import StoreError
from cache_tools.target_store import TargetStore

__all__ = ["ClipStore", "StoreError", "TargetStore"]


def __getattr__(name):  # ClipStore imported on first use (h5py only when needed)
    if name == "ClipStore":
        from cache_tools.clip_store import ClipStore

        return ClipStore
    raise AttributeError(f"module 'cache_tools' has no attribute {name!r}")
