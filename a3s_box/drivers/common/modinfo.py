"""Kernel module metadata: read `.modinfo` from a .ko (ELF) and order modules for loading.

Pure: bytes in, values out. The guest has no modprobe, so the host computes the load
order once, from each module's `depends=` entry, and ships it as a plain list.
"""
from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from a3s_box.errors import BoxError


class ModuleError(BoxError):
    """A kernel module file is unreadable or the wanted set cannot be loaded."""


@dataclass(frozen=True)
class ModInfo:
    name: str  # canonical module name (dashes become underscores, like the kernel does)
    depends: tuple[str, ...]
    fields: tuple[tuple[str, str], ...]  # every key=value of .modinfo, in file order


def canonical(name: str) -> str:
    """The kernel treats `-` and `_` in module names alike; we keep underscores."""
    return name.replace("-", "_")


def _sections(elf: bytes, where: str) -> Iterable[tuple[str, bytes]]:
    if elf[:4] != b"\x7fELF":
        raise ModuleError(f"{where}: not an ELF file")
    if elf[4] != 2:  # ELFCLASS64: every kernel we boot (x86_64, arm64) uses it
        raise ModuleError(f"{where}: not a 64-bit ELF file")
    end = "<" if elf[5] == 1 else ">"
    try:
        (shoff,) = struct.unpack_from(end + "Q", elf, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", elf, 0x3A)

        def header(i: int) -> tuple[int, int, int]:
            name, _type, _flags, _addr, off, size = struct.unpack_from(
                end + "IIQQQQ", elf, shoff + i * shentsize)
            return name, off, size

        _, str_off, str_size = header(shstrndx)
        names = elf[str_off:str_off + str_size]
        for i in range(shnum):
            name_at, off, size = header(i)
            name = names[name_at:names.index(b"\0", name_at)].decode("ascii", "replace")
            if off + size > len(elf):
                raise ModuleError(f"{where}: section {name} runs past the end of the file")
            yield name, elf[off:off + size]
    except (struct.error, ValueError) as e:
        raise ModuleError(f"{where}: malformed ELF section table: {e}") from e


def parse_modinfo(elf: bytes, where: str) -> ModInfo:
    """The `.modinfo` of a module image; `where` names the file in errors."""
    for name, data in _sections(elf, where):
        if name != ".modinfo":
            continue
        fields: list[tuple[str, str]] = []
        for entry in data.split(b"\0"):
            key, sep, value = entry.decode("utf-8", "replace").partition("=")
            if sep:
                fields.append((key, value))
        info = dict(fields)
        if "name" not in info:
            raise ModuleError(f"{where}: .modinfo has no name=")
        deps = tuple(canonical(d) for d in info.get("depends", "").split(",") if d)
        return ModInfo(canonical(info["name"]), deps, tuple(fields))
    raise ModuleError(f"{where}: no .modinfo section (not a kernel module?)")


def load_order(depends: Mapping[str, Sequence[str]], wanted: Iterable[str]) -> list[str]:
    """The wanted modules and everything they depend on, each after its dependencies.

    Deterministic: among modules ready to load, the alphabetically first goes first.
    """
    need: set[str] = set()
    stack = sorted(canonical(w) for w in wanted)
    while stack:
        m = stack.pop()
        if m in need:
            continue
        if m not in depends:
            raise ModuleError(f"kernel module {m} not found")
        need.add(m)
        stack.extend(depends[m])
    waiting = {m: {d for d in depends[m]} for m in need}
    ready = [m for m, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        m = heapq.heappop(ready)
        order.append(m)
        for other, deps in waiting.items():
            if m in deps:
                deps.discard(m)
                if not deps:
                    heapq.heappush(ready, other)
    if len(order) != len(need):
        stuck = sorted(need - set(order))
        raise ModuleError(f"kernel modules depend on each other in a cycle: {', '.join(stuck)}")
    return order
