"""A named volume made on a full home (issue 24): a DiskFullError naming the home, and
no half-made volume folder left; the same home makes it once there is space."""
from __future__ import annotations

import re

import pytest

from a3s_box.errors import DiskFullError
from a3s_box.home import Home
from a3s_box.volumes import VolumeStore
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)


def test_a_volume_on_a_full_home_is_a_clear_error_and_leaves_nothing(small_disk: SmallDisk) -> None:
    root = small_disk.mount(8 << 20)
    store = VolumeStore(Home(root))
    filler = small_disk.fill(root)
    with pytest.raises(DiskFullError) as err:
        store.ensure("p", "cache", 64 << 20)  # sparse, but mkfs writes its metadata
    assert re.fullmatch(rf"volume cache: no space left on {root} \(\d+ KiB free\)", str(err.value)), str(err.value)
    assert [p.name for p in (root / "volumes").iterdir()] == []
    filler.unlink()
    assert store.ensure("p", "cache", 64 << 20).is_file()
    assert [v.name for v in store.list("p")] == ["cache"]
