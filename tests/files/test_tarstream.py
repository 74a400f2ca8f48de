"""The host side of `box cp`: a tar from a hostile guest only ever writes below its
destination, and nothing appears there unless the whole stream was good."""
from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.files.tarstream import QueueReader, TarError, extract_tar, write_tar


def _tar(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                t.addfile(info)
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, str(data)
                t.addfile(info)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("name", ["/etc/evil", "../evil", "a/../../evil"])
def test_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "dest").mkdir()
    with pytest.raises(TarError):
        extract_tar(_tar(("file", name, b"x")), tmp_path / "dest")
    assert not (tmp_path / "evil").exists()


def test_a_symlink_from_the_stream_is_never_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dest").mkdir()
    with pytest.raises(OSError):
        extract_tar(_tar(("sym", "link", str(outside)), ("file", "link/planted", b"x")), tmp_path / "dest")
    assert list(outside.iterdir()) == []
    assert os.readlink(tmp_path / "dest/link") == str(outside)  # kept as a symlink, not followed


def test_hard_links_and_devices_are_not_made(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    extract_tar(_tar(("hard", "h", "/etc/passwd"), ("file", "ok", b"1")), tmp_path / "dest")
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["ok"]


def test_a_tree_round_trips_with_modes_symlinks_empty_folders_and_mtimes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "empty").mkdir(parents=True)
    (src / "f").write_bytes(os.urandom(3 << 20))
    (src / "f").chmod(0o751)
    (src / "l").symlink_to("f")
    os.utime(src / "f", (1_600_000_000, 1_600_000_000))
    os.utime(src / "empty", (1_500_000_000, 1_500_000_000))
    reader = QueueReader(depth=1000)
    write_tar(src, "src", reader.feed)
    reader.close_feed()
    dest = tmp_path / "dest"
    dest.mkdir()
    assert extract_tar(reader, dest) == ["src"]
    got = dest / "src"
    assert (got / "f").read_bytes() == (src / "f").read_bytes()
    assert (got / "f").stat().st_mode & 0o7777 == 0o751
    assert int((got / "f").stat().st_mtime) == 1_600_000_000
    assert int((got / "empty").stat().st_mtime) == 1_500_000_000
    assert os.readlink(got / "l") == "f"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_garbage_is_a_tar_error_never_a_crash(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        try:
            extract_tar(io.BytesIO(data), Path(d))
        except (TarError, OSError):
            pass
