"""The newc writer, read back by GNU cpio (an independent reader), and the initramfs."""
from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from a3s_box.drivers.common.artifacts import GuestArtifacts, initramfs_entries, initramfs_key
from a3s_box.drivers.common.cpio import Entry, gzip_newc, newc
from a3s_box.drivers.common.kernel import GuestModule

ENTRIES = [Entry.dir("a3s"), Entry.dir("a3s/modules", 0o700),
           Entry.file("init", b"\x7fELF-ish\0binary", 0o755),
           Entry.file("a3s/modules/load", b"virtio.ko\n"),
           Entry.file("a3s/odd", b"123"),  # sizes that need padding
           Entry.file("empty", b""),
           Entry.symlink("sbin", "a3s")]


def _cpio_extract(archive: bytes, dest: Path) -> str:
    if shutil.which("cpio") is None:
        pytest.skip("needs cpio")
    dest.mkdir()
    proc = subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=dest,
                          input=archive, capture_output=True, check=True)
    listing = subprocess.run(["cpio", "-tv", "--quiet"], input=archive, capture_output=True,
                             check=True)
    assert proc.stderr == b""
    return listing.stdout.decode()


def test_gnu_cpio_reads_back_what_we_wrote(tmp_path: Path) -> None:
    out = tmp_path / "x"
    listing = _cpio_extract(newc(ENTRIES), out)
    assert (out / "init").read_bytes() == b"\x7fELF-ish\0binary"
    assert stat.S_IMODE((out / "init").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "a3s/modules").stat().st_mode) == 0o700
    assert (out / "a3s/modules/load").read_text() == "virtio.ko\n"
    assert (out / "a3s/odd").read_bytes() == b"123"
    assert (out / "empty").read_bytes() == b""
    assert os.readlink(out / "sbin") == "a3s"
    names = [line.split()[-1] if "->" not in line else line.split()[-3]
             for line in listing.splitlines()]
    assert names == ["a3s", "a3s/modules", "init", "a3s/modules/load", "a3s/odd", "empty", "sbin"]
    assert " root " in listing.splitlines()[0]  # uid/gid 0 whoever builds it


def test_archives_are_reproducible() -> None:
    assert gzip_newc(ENTRIES) == gzip_newc(ENTRIES)
    assert gzip.decompress(gzip_newc(ENTRIES)) == newc(ENTRIES)
    assert len(newc(ENTRIES)) % 4 == 0


def test_absolute_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="relative"):
        newc([Entry.file("/init", b"")])


def test_initramfs_layout_and_key() -> None:
    mods = (GuestModule("virtio_ring", b"r"), GuestModule("virtio", b"v"))
    entries = initramfs_entries(b"INIT", mods)
    assert [(e.path, e.data) for e in entries if not stat.S_ISDIR(e.mode)] == [
        ("init", b"INIT"), ("a3s/modules/virtio_ring.ko", b"r"), ("a3s/modules/virtio.ko", b"v"),
        ("a3s/modules/load", b"virtio_ring.ko\nvirtio.ko\n")]
    key = initramfs_key(b"INIT", mods)
    assert key == initramfs_key(b"INIT", mods)
    assert key != initramfs_key(b"INIT2", mods)
    assert key != initramfs_key(b"INIT", mods[::-1])  # the order is part of what boots


def test_the_provisioned_initramfs_holds_init_and_modules(artifacts: GuestArtifacts,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "initramfs"
    _cpio_extract(gzip.decompress(artifacts.initramfs.read_bytes()), out)
    assert (out / "init").read_bytes() == artifacts.init_binary.read_bytes()
    load = (out / "a3s/modules/load").read_text().split()
    assert load and all((out / "a3s/modules" / name).is_file() for name in load)
    assert load.index("virtio_ring.ko") < load.index("virtio.ko") < load.index("virtio_mmio.ko")
