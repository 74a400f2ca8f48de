"""A snapshot template is saved in the home only when it fits (issue 24), with no VM:
the template store refuses, before a staging folder exists, a template whose RAM file,
disk copy and state would not fit the free space (the driver then boots the box cold,
which tests/e2e/test_snapshots.py's VMs exercise)."""
from __future__ import annotations

from pathlib import Path

import pytest

from a3s_box.drivers.qemu.snapshot import TemplateStore, template_bytes
from a3s_box.errors import DiskFullError
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)

MiB = 1 << 20
KEY = "3f2a" * 16


def test_a_template_that_cannot_fit_is_refused_before_it_is_staged(small_disk: SmallDisk,
                                                                   tmp_path: Path) -> None:
    cache = small_disk.mount(16 * MiB)
    store = TemplateStore(cache)
    overlay = tmp_path / "disk.qcow2"
    overlay.write_bytes(b"\0" * (256 << 10))
    needs = template_bytes(128, overlay)
    assert needs == 128 * MiB + (256 << 10) + 4 * MiB
    with pytest.raises(DiskFullError) as err:
        store.staging(KEY, needs)
    assert str(err.value) == (f"snapshot template {KEY[:12]}: no space left on {cache / 'snapshots'} "
                              f"(file system {cache}; needs 133 MiB more; 16 MiB free)")
    assert [p.name for p in (cache / "snapshots").iterdir()] == []
    staged = store.staging(KEY, template_bytes(8, overlay))
    assert staged.is_dir() and staged.name.startswith(f".tmp-{KEY}-")
