"""OCI images: pull from registries, import from disk, store by digest, turn into roots.

Public API (everything else in this package is internal):
    parse_reference(ref) -> Reference
    ImageStore(home): pull, import_path, ensure, get, list, remove, prune, evict_to,
                      unpacked_dir, rootfs_base, create_box_disk, remove_box_disk
    ImageRecord, ImageConfig, ImageSource
"""
from __future__ import annotations

from a3s_box.image.manifest import ImageConfig
from a3s_box.image.records import ImageRecord
from a3s_box.image.reference import Reference, parse_reference
from a3s_box.image.store import ImageSource, ImageStore

__all__ = ["ImageConfig", "ImageRecord", "ImageSource", "ImageStore", "Reference", "parse_reference"]
