"""What a qcow2 header says, read directly (pure reads; no qemu-img, no lock taken):
the backing file and the virtual size. Anything that is not qcow2 reads as a raw file."""
from __future__ import annotations

from pathlib import Path

MAGIC = b"QFI\xfb"


def _header(image: Path) -> bytes:
    try:
        with open(image, "rb") as f:
            return f.read(32)
    except OSError:
        return b""


def backing_file(image: Path) -> Path | None:
    """The backing file named in a qcow2 header (None for raw or no backing)."""
    head = _header(image)
    if len(head) < 20 or head[:4] != MAGIC:
        return None
    offset, size = int.from_bytes(head[8:16], "big"), int.from_bytes(head[16:20], "big")
    if not offset or not 0 < size <= 4096:
        return None
    try:
        with open(image, "rb") as f:
            f.seek(offset)
            name = f.read(size).decode(errors="replace")
    except OSError:
        return None
    path = Path(name)
    return path if path.is_absolute() else image.parent / path


def backing_chain(image: Path, limit: int = 64) -> list[Path]:
    """IMAGE's backing files, nearest first."""
    chain: list[Path] = []
    current: Path | None = image
    while current is not None and len(chain) < limit:
        current = backing_file(current)
        if current is not None:
            chain.append(current)
    return chain


def virtual_size(image: Path) -> int:
    """The size the guest sees: the qcow2 header's, or a raw file's length (0 if gone)."""
    head = _header(image)
    if len(head) >= 32 and head[:4] == MAGIC:
        return int.from_bytes(head[24:32], "big")
    try:
        return image.stat().st_size
    except OSError:
        return 0


def allocated(image: Path) -> int:
    try:
        return image.stat().st_blocks * 512
    except OSError:
        return 0
