"""Without root: the user's subordinate ids (a3s_box/subids.py) and files handed to a
VMM by mode bits (a3s_box/jail/files.py). Unit level; tests/rootless runs them for real."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from a3s_box import subids
from a3s_box.jail.files import give


def test_a_range_is_found_by_name_or_uid_and_empty_or_malformed_lines_are_not_ranges(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "subuid").write_text("other:100000:65536\nbad line\nzero:300000:0\nme:165536:65536\n")
    (tmp_path / "subgid").write_text("1234:200000:1000\n")
    monkeypatch.setattr(subids, "SUBUID", tmp_path / "subuid")
    monkeypatch.setattr(subids, "SUBGID", tmp_path / "subgid")
    assert subids._range(subids.SUBUID, ("me", "1234")) == (165536, 65536)
    assert subids._range(subids.SUBGID, ("me", "1234")) == (200000, 1000)  # by uid
    assert subids._range(subids.SUBUID, ("zero", "9")) is None  # a count of 0 is no range
    assert subids._range(tmp_path / "missing", ("me",)) is None
    ids = subids.SubordinateIds(1234, 1234, 165536, 200000, 1000)
    assert (ids.host_uid(0), ids.host_uid(1), ids.host_uid(1000)) == (1234, 165536, 166535)


def test_root_has_no_subordinate_ids_to_map() -> None:
    assert subids.subordinate_ids(0) is None


@pytest.mark.parametrize("mode, uid, gid, expected", [
    (0o600, 5, 5, 0o606),   # a VMM's own file: what its owner may do, others may
    (0o700, 5, 5, 0o707),   # its vmm/ folder
    (0o660, 0, 7, 0o666),   # a template's RAM: the clones' group, so others
    (0o644, 0, 0, 0o644),   # taken back: read-only to every VMM
])
def test_without_root_a_file_is_given_to_the_vmms_as_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            mode: int, uid: int, gid: int, expected: int) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the rootless branch; chmod works as root too
    give(f, uid, gid, mode)
    assert f.stat().st_mode & 0o777 == expected
