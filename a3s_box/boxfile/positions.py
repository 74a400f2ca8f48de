"""Source positions of values: the path of a problem back to FILE:LINE:COL.

Documents are ruamel.yaml round-trip trees, which know where every key and value
starts. A path that does not exist in the source (a default, a canonical form) falls
back to its nearest ancestor that does. With several files, the last file that has
the path wins, as it does when merging.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PathItem = str | int


@dataclass(frozen=True)
class Located:
    file: str
    line: int
    column: int


def _step(node: Any, item: PathItem) -> tuple[Any, tuple[int, int] | None, tuple[int, int] | None]:
    """(child, key position, value position) or (None, ...) when absent."""
    lc = getattr(node, "lc", None)
    if isinstance(node, dict) and item not in node:
        # Paths carry keys as text; the source may have them as numbers, null or booleans.
        item = next((k for k in node if str(k) == str(item)), item)
    if isinstance(node, dict) and item in node:
        key_pos = val_pos = None
        if lc is not None:
            try:
                k = lc.key(item)
                key_pos = (k[0], k[1])
                v = lc.value(item)
                val_pos = (v[0], v[1])
            except (KeyError, TypeError, AttributeError):
                pass
        return node[item], key_pos, val_pos
    if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
        pos = None
        if lc is not None:
            try:
                p = lc.item(item)
                pos = (p[0], p[1])
            except (KeyError, TypeError, AttributeError, IndexError):
                pass
        return node[item], pos, pos
    return None, None, None


def _walk(root: Any, path: Sequence[PathItem], want_key: bool) -> tuple[int, tuple[int, int] | None]:
    """How many path items exist, and the best position found along the way."""
    node = root
    best: tuple[int, int] | None = (getattr(root, "lc", None) and (root.lc.line, root.lc.col)) or None
    depth = 0
    for i, item in enumerate(path):
        child, key_pos, val_pos = _step(node, item)
        if key_pos is None and val_pos is None and child is None:
            break
        last = i == len(path) - 1
        pos = key_pos if (want_key and last) else (val_pos or key_pos)
        if pos is not None:
            best = pos
        node = child
        depth = i + 1
    return depth, best


def locate(docs: Sequence[tuple[Path, Any]], path: Sequence[PathItem], want_key: bool = False) -> Located:
    """Position of `path` (or its nearest existing ancestor), in the file it came from."""
    best_depth, best = -1, None
    best_file = str(docs[-1][0]) if docs else "<boxfile>"
    for file, root in reversed(docs):  # later files win
        depth, pos = _walk(root, path, want_key)
        if depth > best_depth:
            best_depth, best, best_file = depth, pos, str(file)
        if depth == len(path):
            break
    if best is None:
        return Located(best_file, 1, 1)
    return Located(best_file, best[0] + 1, best[1] + 1)
