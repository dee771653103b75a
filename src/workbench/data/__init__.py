"""Data layer: readers, slicing, phantoms and the SliceStore (imports numpy, nibabel, torch only)."""
from .store import SliceStore, StoreWriter, align_channels, delete_store, open_store
from .temporaries import find_temporaries, remove_temporaries

__all__ = ["SliceStore", "StoreWriter", "align_channels", "delete_store", "find_temporaries", "open_store",
           "remove_temporaries"]
