"""The per-box log writer and reader: the cap holds, rotation keeps the newest lines,
a full disk drops and counts instead of failing, and stamps round-trip."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.logs.reader import follow, log_files, read_lines, select, split_stamp
from a3s_box.logs.writer import LogLimits, RotatingFile, TimestampedLines, stamp


def test_the_cap_holds_and_the_newest_lines_are_kept(tmp_path: Path) -> None:
    log = RotatingFile(tmp_path / "console.log", LogLimits(max_size=1000, max_files=3))
    for i in range(1000):
        log.write(f"line {i:04d}\n".encode())
    log.close()
    files = log_files(tmp_path / "console.log")
    assert [p.name for p in files] == ["console.log.2", "console.log.1", "console.log"]
    assert all(p.stat().st_size <= 1000 for p in files)
    lines = read_lines(tmp_path / "console.log")
    assert lines[-1] == b"line 0999\n"
    assert [int(ln.split()[1]) for ln in lines] == list(range(1000 - len(lines), 1000))  # in order, no gap


def test_one_file_means_truncation_and_a_huge_write_keeps_its_end(tmp_path: Path) -> None:
    log = RotatingFile(tmp_path / "l", LogLimits(max_size=100, max_files=1))
    log.write(b"a" * 80)
    log.write(b"b" * 500)
    log.close()
    assert (tmp_path / "l").read_bytes() == b"b" * 100 and log_files(tmp_path / "l") == [tmp_path / "l"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs to fill (root)")
def test_a_full_disk_drops_and_counts_then_says_so(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        log = RotatingFile(mnt / "console.log", LogLimits(max_size=1 << 20, max_files=2))
        filler = mnt / "filler"
        with open(filler, "wb") as f:
            try:
                f.write(b"x" * (1 << 20))
            except OSError:
                pass  # the disk is full now
        for _ in range(50):
            log.write(b"lost line\n")  # never raises
        assert log.dropped_writes >= 1
        filler.unlink()
        log.write(b"after\n")
        log.close()
        text = (mnt / "console.log").read_bytes()
        assert text.endswith(b"after\n") and b"bytes of log in" in text and b"were dropped" in text
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=20))
def test_stamps_strip_back_to_the_text_however_it_was_chunked(chunks: list[bytes]) -> None:
    t = TimestampedLines()
    stamped = b"".join(t.feed(c, now=1_700_000_000.5) for c in chunks)
    assert select(stamped.splitlines(keepends=True)) == b"".join(chunks)


def test_since_and_tail_and_timestamps() -> None:
    lines = [stamp(100.0) + b"old\n", stamp(200.0) + b"new\n", b"unstamped\n", stamp(300.0) + b"newest\n"]
    assert select(lines, since=150.0) == b"new\nunstamped\nnewest\n"
    assert select(lines, tail=2) == b"unstamped\nnewest\n"
    assert select(lines, tail=1, timestamps=True) == stamp(300.0) + b"newest\n"
    assert split_stamp(stamp(1.25) + b"x")[0] == pytest.approx(1.25)


def test_follow_reads_on_through_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    log = RotatingFile(path, LogLimits(max_size=200, max_files=2))
    log.write(b"before\n")
    got: list[bytes] = []
    done = threading.Event()

    def reader() -> None:
        for chunk in follow(path, alive=lambda: not done.is_set(), poll=0.01):
            got.append(chunk)
    th = threading.Thread(target=reader)
    th.start()
    time.sleep(0.1)
    for i in range(40):  # several rotations
        log.write(f"n{i:02d}\n".encode())
        time.sleep(0.005)
    time.sleep(0.2)
    done.set()
    th.join(5)
    log.close()
    seen = b"".join(got).split()
    assert seen[-1] == b"n39" and b"before" not in seen
    assert [int(x[1:]) for x in seen] == sorted(int(x[1:]) for x in seen)
