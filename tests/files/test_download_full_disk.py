"""`box cp BOX:PATH DIR` into a host folder whose disk fills (issue 24), with no VM: the
host side (BoxFiles.download) fed by a fake guest whose /.a3s/tar streams a tree
bigger than the destination's 60 MiB tmpfs, as the guest init's would.

The copy ends in a DiskFullError naming the destination folder, the guest's tar is
stopped, nothing is left at the destination or beside it, and the copy does not hang
on a stream nobody reads any more. The CLI itself needs a running box (a VM): not
here; it prints this error like any other (exit 1)."""
from __future__ import annotations

import errno
import io
import signal
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from a3s_box.errors import DiskFullError
from a3s_box.files import BoxFiles
from a3s_box.files.tarstream import CHUNK
from a3s_box.guest.protocol import ExecRequest, ExitKind, ExitStatus
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)

MiB = 1 << 20


class _Zeros(io.RawIOBase):
    def __init__(self, size: int, stop: threading.Event) -> None:
        self.left, self.stop = size, stop

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.stop.is_set():
            raise InterruptedError("killed")
        n = min(len(b), self.left, CHUNK)
        b[:n] = bytes(n)
        self.left -= n
        return n


class _Sink(io.RawIOBase):
    def __init__(self, out: Callable[[bytes], None]) -> None:
        self.out = out

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.out(bytes(b))
        return len(b)


class FakeSession:
    """The guest's `tar c -C / out`: a folder, a small file, then SIZE bytes of a big one,
    streamed to on_stdout from a thread of its own (the client's reader thread)."""

    def __init__(self, on_stdout: Callable[[bytes], None], size: int) -> None:
        self.killed = threading.Event()
        self.signals: list[int] = []
        self.thread = threading.Thread(target=self._stream, args=(on_stdout, size), daemon=True)
        self.thread.start()

    def _stream(self, out: Callable[[bytes], None], size: int) -> None:
        try:
            with tarfile.open(fileobj=io.BufferedWriter(_Sink(out), CHUNK), mode="w|",
                              format=tarfile.GNU_FORMAT) as tar:
                d = tarfile.TarInfo("out")
                d.type, d.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(d)
                small = tarfile.TarInfo("out/small")
                small.size = 5
                tar.addfile(small, io.BytesIO(b"hello"))
                big = tarfile.TarInfo("out/big")
                big.size = size
                tar.addfile(big, io.BufferedReader(_Zeros(size, self.killed), CHUNK))
        except InterruptedError:
            pass

    def signal(self, signo: int) -> None:
        self.signals.append(signo)
        self.killed.set()

    def write(self, data: bytes) -> None:
        raise AssertionError("a copy out sends no stdin")

    def close_stdin(self) -> None:
        raise AssertionError("a copy out sends no stdin")

    def wait(self, timeout: float | None = None) -> ExitStatus:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError("the guest's tar is still writing")
        if self.killed.is_set():
            return ExitStatus(ExitKind.SIGNALED, signal.SIGKILL)
        return ExitStatus(ExitKind.EXITED, 0)


class FakeGuest:
    def __init__(self, size: int) -> None:
        self.size = size
        self.sessions: list[FakeSession] = []

    def start(self, req: ExecRequest, on_stdout: Callable[[bytes], None],
              on_stderr: Callable[[bytes], None]) -> FakeSession:
        assert req.argv == ("/.a3s/tar", "c", "-C", "/", "out"), req.argv
        self.sessions.append(FakeSession(on_stdout, self.size))
        return self.sessions[-1]


def _download(files: BoxFiles, dest: Path) -> BaseException | Path:
    """The copy, in a thread: a copy that hangs fails the test instead of the run."""
    done: list[BaseException | Path] = []

    def run() -> None:
        try:
            done.append(files.download("/out", dest))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            done.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the copy hung: the guest's output had nowhere to go"
    return done[0]


def test_a_copy_that_fits_arrives_whole(small_disk: SmallDisk) -> None:
    dest = small_disk.mount(60 * MiB)
    got = _download(BoxFiles(FakeGuest(10 * MiB), "coder"), dest)
    assert got == dest / "out"
    assert (dest / "out" / "small").read_bytes() == b"hello"
    assert (dest / "out" / "big").stat().st_size == 10 * MiB


def test_a_copy_out_that_fills_the_host_disk_leaves_nothing_and_says_so(small_disk: SmallDisk) -> None:
    dest = small_disk.mount(60 * MiB)
    guest = FakeGuest(100 * MiB)
    err = _download(BoxFiles(guest, "coder"), dest)
    assert isinstance(err, DiskFullError), repr(err)
    assert str(err).startswith(f"box coder: /out: no space left on {dest} (")
    assert err.free is not None and err.free >= 59 * MiB  # said once the half-copied tree was gone
    assert guest.sessions[0].signals == [signal.SIGKILL]  # its tar was stopped, not drained
    assert small_disk.files(dest) == []


def test_a_tar_stream_out_onto_a_full_disk_stops_the_guest_and_raises_its_error(small_disk: SmallDisk) -> None:
    """`box cp coder:/out - > FILE` with FILE on a full disk: the OSError reaches the CLI
    (which names standard output's file and folder), the guest's tar is stopped."""
    dest = small_disk.mount(16 * MiB)
    guest = FakeGuest(100 * MiB)
    files = BoxFiles(guest, "coder")
    with open(dest / "out.tar", "wb", buffering=0) as sink:
        with pytest.raises(OSError) as err:
            files.download_tar("/out", sink)
    assert err.value.errno == errno.ENOSPC
    assert guest.sessions[0].signals == [signal.SIGKILL]
