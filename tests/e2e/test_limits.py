"""A runaway guest cannot hurt the host (real VMs): a console flood stays within its
log cap, rotated, with the newest lines kept; a box gets the disk it asks for; a disk
that cannot fit the host's free space is refused before anything exists."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm

CAP = 128 << 10
PAD = "x" * 90

BOXES = f"""project: limits
boxes:
  flood:
    image: hello
    logging: {{max_size: 128Ki, max_files: 2}}
    namespaces:
      agent: {{command: ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo \\"$i {PAD}\\"; done"]}}
  quiet:
    image: hello
    resources: {{disk: 3Gi}}
    namespaces: {{agent: {{command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}}}
"""


def _last_number(box: BoxCli, name: str) -> int:
    out = box("logs", name, "--tail", "3", check=True).out.split("\n")
    # whole lines only: one cut at a rotation or a read's edge ("76 xxx" of "1276 xxx") is not a count
    nums = [int(f[0]) for f in (line.split() for line in out) if len(f) == 2 and f[0].isdigit() and f[1] == PAD]
    return max(nums) if nums else 0


@pytest.fixture(scope="module")
def limits(box: BoxCli, hello_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = boxfile(tmp_path_factory.mktemp("limits"), hello_image, BOXES)
    box("apply", "-f", str(f), check=True)
    return f


def test_a_console_flood_stays_within_its_cap(box: BoxCli, limits: Path) -> None:
    rundir = box.home / "boxes" / "limits.flood"
    deadline = time.monotonic() + 240
    while _last_number(box, "flood") * (len(PAD) + 8) < 10 * 2 * CAP and time.monotonic() < deadline:
        time.sleep(1)
    written = _last_number(box, "flood") * (len(PAD) + 8)
    assert written >= 10 * 2 * CAP, f"the agent wrote only {written} bytes"
    files = sorted(rundir.glob("console.log*"))
    assert [f.name for f in files] == ["console.log", "console.log.1"]
    assert sum(f.stat().st_size for f in files) <= 2 * CAP + 4096
    tail = [line for line in box("logs", "flood", "--tail", "6", check=True).out.splitlines()]
    assert len(tail) == 6
    # the first may be cut by a rotation, the last still being written: the four between
    nums = [int(line.split()[0]) for line in tail[1:-1]]
    assert nums == list(range(nums[0], nums[0] + 4)) and nums[-1] >= written // (len(PAD) + 8) - 1000
    stamped = box("logs", "flood", "--tail", "1", "-t", check=True).out
    assert stamped[:4].isdigit() and stamped[10] == "T"  # when each line began, on request
    assert box("exec", "quiet", "--", "true").code == 0  # the other box is unaffected


def test_a_box_gets_the_disk_it_asks_for(box: BoxCli, limits: Path) -> None:
    out = box("exec", "quiet", "--", "df", "-k", "/", check=True).out.splitlines()[-1].split()
    size_kib, avail_kib = int(out[1]), int(out[3])
    assert size_kib >= 2.8 * (1 << 20) and avail_kib >= 2.5 * (1 << 20), out


def test_a_disk_that_cannot_fit_is_refused_before_anything_exists(box: BoxCli, hello_image: Path,
                                                                  tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, """project: huge
boxes:
  big:
    image: hello
    resources: {disk: 1Ti}
""")
    r = box("apply", "-f", str(f))
    assert r.code != 0
    assert "box huge.big: its disk (1024.0 GiB) does not fit on this host:" in r.err, r.err
    assert "(after" not in r.err  # refused, not retried
    assert "huge" not in box("ps", check=True).out
    assert not (box.home / "boxes" / "huge.big").exists()


def test_a_leased_box_idle_past_its_timeout_is_ended_and_its_name_freed(
        box: BoxCli, hello_image: Path, tmp_path: Path) -> None:
    f = boxfile(tmp_path, hello_image, """project: leases
boxes:
  worker:
    image: hello
    lifetime: {idle_timeout: 4s}
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
pools:
  workers: {box: worker, min_ready: 1, max: 3}
""")
    box("apply", "-f", str(f), check=True)
    box("pool", "acquire", "workers", "--name", "job", check=True)
    for _ in range(8):  # in use: execs keep it alive past its idle timeout
        assert box("exec", "job", "--", "true").code == 0
        time.sleep(1)
    deadline = time.monotonic() + 30
    while "job" in box("ps", check=True).out and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "job" not in box("ps", check=True).out, "the idle lease was not ended"
    box("pool", "acquire", "workers", "--name", "job", check=True)  # the name is free again
    box("delete", "-f", str(f), check=True)
