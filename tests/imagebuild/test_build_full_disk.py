"""A build whose layer writes fill the home (issue 24), with no VM: COPY of a big file
of random data from the context, FROM scratch, into a home on a 60 MiB tmpfs. The
build ends in DiskFullError naming the image and the home, its work folder and temp
files are gone, and the same home builds a smaller image afterwards."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from a3s_box.errors import DiskFullError
from a3s_box.home import Home
from a3s_box.image.store import ImageStore
from a3s_box.imagebuild.builder import Builder, BuildRequest
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)

MiB = 1 << 20


def _request(ctx: Path, size: int) -> BuildRequest:
    (ctx / "big.bin").write_bytes(os.urandom(size))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big.bin /big.bin\n")
    return BuildRequest(name="localhost/big:1", context=ctx, dockerfile=ctx / "Dockerfile")


def test_a_build_whose_layer_fills_the_home_leaves_nothing(small_disk: SmallDisk, tmp_path: Path) -> None:
    root = small_disk.mount(60 * MiB)
    home = Home(root).ensure()
    store = ImageStore(home)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    with pytest.raises(DiskFullError) as err:
        Builder(home, store).build(_request(ctx, 30 * MiB))  # its tar, then its gzip: 60 MiB
    assert re.fullmatch(rf"image localhost/big:1: no space left on {root} \((\d+) MiB free\)", str(err.value))
    assert err.value.free is not None and err.value.free >= 58 * MiB  # said with the work folder gone
    assert list((root / "build").iterdir()) == []
    big = [p for p in root.rglob("*") if p.is_file() and p.stat().st_size > 64 << 10]
    assert big == [] and list((root / "images" / "tmp").iterdir()) == []
    assert store.list() == []

    result = Builder(home, store).build(_request(ctx, 10 * MiB))
    assert result.record is not None
    assert (store.unpacked_dir(result.record) / "big.bin").stat().st_size == 10 * MiB
