"""Data layer: readers, slicing, phantoms and the SliceStore (imports numpy, nibabel, torch only)."""
from .store import SliceStore, StoreWriter, open_store

__all__ = ["SliceStore", "StoreWriter", "open_store"]
