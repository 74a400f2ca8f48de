"""A fixed buffer the proxy reads into and scans for secrets' values with the C
library's memmem: bytes.find's two-way search ran at a third of memmem's speed and was
the largest cost of an intercepted download after the crypto itself (bench/network.py).

    buf = ScanBuffer(256 << 10); n = sock.recv_into(buf.view, 256 << 10)
    buf.find(b"sk-value", 0, n) -> index or -1     (as bytearray.find)
"""
from __future__ import annotations

import ctypes
import ctypes.util

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_memmem = _libc.memmem
_memmem.restype = ctypes.c_void_p
_memmem.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]


class ScanBuffer:
    def __init__(self, size: int) -> None:
        self.data = bytearray(size)  # never resized: ctypes holds an export of it
        self.view = memoryview(self.data)
        self._c = (ctypes.c_char * size).from_buffer(self.data)
        self._address = ctypes.addressof(self._c)

    def find(self, needle: bytes, start: int, end: int) -> int:
        end = min(end, len(self.data))
        if not needle or start < 0 or end - start < len(needle):
            return self.data.find(needle, start, end)
        hit = _memmem(self._address + start, end - start, needle, len(needle))
        return -1 if hit is None else int(hit) - self._address
