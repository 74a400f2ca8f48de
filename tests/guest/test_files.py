"""PUT and GET against the real guest init."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from a3s_box.errors import GuestError
from a3s_box.guest.protocol import Namespace

if TYPE_CHECKING:
    from tests.guest.conftest import LocalGuest


def test_put_then_get_round_trips_with_mode(guest: LocalGuest, tmp_path: Path) -> None:
    data = os.urandom(700_000)  # several DATA frames
    path = tmp_path / "f.bin"
    guest.client.put(str(path), data, mode=0o640)
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o640
    assert guest.client.get(str(path)) == data


def test_empty_file(guest: LocalGuest, tmp_path: Path) -> None:
    guest.client.put(str(tmp_path / "e"), b"")
    assert guest.client.get(str(tmp_path / "e")) == b""


def test_put_replaces_atomically_and_leaves_no_temp(guest: LocalGuest, tmp_path: Path) -> None:
    guest.client.put(str(tmp_path / "f"), b"old")
    guest.client.put(str(tmp_path / "f"), b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert (tmp_path / "f").read_bytes() == b"new"


def test_put_into_a_missing_folder_names_the_path(guest: LocalGuest, tmp_path: Path) -> None:
    with pytest.raises(GuestError, match=r"box test: put .*/nope/f: .*No such file"):
        guest.client.put(str(tmp_path / "nope" / "f"), b"x")


def test_get_of_a_missing_file_names_the_path(guest: LocalGuest, tmp_path: Path) -> None:
    with pytest.raises(GuestError, match=r"get .*/missing: .*No such file"):
        guest.client.get(str(tmp_path / "missing"))


def test_get_of_a_folder_is_refused(guest: LocalGuest, tmp_path: Path) -> None:
    with pytest.raises(GuestError, match="not a regular file"):
        guest.client.get(str(tmp_path))


def test_files_in_the_agent_namespace_see_its_mounts(guest: LocalGuest) -> None:
    # the agent namespace has its own /proc: its pid 1 is not the host's
    in_agent = guest.client.run(["cat", "/proc/1/comm"]).stdout
    assert guest.client.get("/proc/1/comm", ns=Namespace.AGENT) == in_agent
    assert guest.client.get("/proc/1/comm", ns=Namespace.ROOT) == Path("/proc/1/comm").read_bytes()
    assert in_agent != Path("/proc/1/comm").read_bytes()


def test_agent_namespace_paths_cannot_escape_by_symlink(guest: LocalGuest, tmp_path: Path) -> None:
    # an absolute symlink resolves inside the namespace's root, which here is the host's /
    link = tmp_path / "link"
    link.symlink_to("/etc/hostname")
    assert guest.client.get(str(link), ns=Namespace.AGENT) == Path("/etc/hostname").read_bytes()
