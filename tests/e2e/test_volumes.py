"""Volumes and `box cp` on real microVMs: binds both ways, read-only that holds against
root in the guest, escape attempts, named volumes across recreate and delete, tmpfs,
and a tree with a symlink, an empty folder and a 200 MiB file copied byte for byte."""
from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import a3s_box
from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def vol(box: BoxCli, hello_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    folder = tmp_path_factory.mktemp("vol")
    (folder / "src").mkdir()
    (folder / "src" / "hello.txt").write_text("from the host\n")
    (folder / "data").mkdir()
    (folder / "data" / "ro.txt").write_text("read only\n")
    (folder / "data" / "sub").mkdir()  # a mount below a read-only source must be read-only too
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder / "data" / "sub")], check=True)
    try:
        yield from _volumes_box(box, hello_image, folder)
    finally:
        subprocess.run(["umount", str(folder / "data" / "sub")])


def _volumes_box(box: BoxCli, hello_image: Path, folder: Path) -> Iterator[dict[str, Path]]:
    (folder / "outside.txt").write_text("must not change\n")
    (folder / "owned").mkdir()
    os.chown(folder / "owned", 1000, 1000)  # a user's own folder
    f = boxfile(folder, hello_image, """volumes:
  cache: {size: 64Mi}
boxes:
  v:
    image: hello
    resources: {memory: 192Mi}
    namespaces:
      agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}
    volumes:
      - ./src:/workspace
      - ./data:/data:ro
      - ./owned:/owned
      - cache:/root/.cache
      - {type: tmpfs, target: /scratch, size: 16Mi}
""")
    r = box("apply", "-f", str(f))
    assert r.code == 0, r.out + r.err
    yield {"folder": folder, "file": f}
    box("delete", "--volumes", "-f", str(f))


def _sh(box: BoxCli, script: str) -> tuple[int, str, str]:
    r = box("exec", "v", "--", "sh", "-c", script, timeout=300)
    return r.code, r.out, r.err


def test_a_bind_volume_is_shared_both_ways(box: BoxCli, vol: dict[str, Path]) -> None:
    # a clone of a snapshot template: its shares were hot-plugged, and every test of this
    # module attacks them (a `boot: cold` box has them from boot: the same virtiofsd)
    boot = {b["name"]: b["boot"] for b in box("ps", "-o", "json", check=True).json()}
    assert boot["v"].startswith("snapshot "), boot
    src = vol["folder"] / "src"
    assert _sh(box, "cat /workspace/hello.txt")[1] == "from the host\n"
    (src / "later.txt").write_text("edited on the host\n")
    assert _sh(box, "cat /workspace/later.txt")[1] == "edited on the host\n"
    assert _sh(box, "echo from the guest > /workspace/guest.txt")[0] == 0
    assert (src / "guest.txt").read_text() == "from the guest\n"


def test_a_read_only_volume_refuses_writes_even_after_a_remount(box: BoxCli, vol: dict[str, Path]) -> None:
    code, out, err = _sh(box, "echo x > /data/ro.txt; echo rc=$?; mount -o remount,rw /data; "
                              "mount | grep ' /data '; echo y > /data/ro.txt; echo rc=$?; "
                              "touch /data/new; echo rc=$?; rm -f /data/ro.txt; echo rc=$?")
    assert "rc=0" not in out, out  # every write fails
    assert "(rw," in out  # the guest believes it is writable now...
    assert (vol["folder"] / "data" / "ro.txt").read_text() == "read only\n"  # ...the host says no
    assert not (vol["folder"] / "data" / "new").exists()


def test_a_read_only_volume_is_read_only_in_mounts_below_it_too(box: BoxCli, vol: dict[str, Path]) -> None:
    code, out, _ = _sh(box, "echo x > /data/sub/new; echo rc=$?; mkdir /data/sub/d; echo rc=$?")
    assert "rc=0" not in out, out
    assert list((vol["folder"] / "data" / "sub").iterdir()) == []


def test_guest_root_makes_no_device_or_setuid_file_in_a_bind(box: BoxCli, vol: dict[str, Path]) -> None:
    """virtiofsd is root on the host: root in the guest asks it for a block device of the
    host's disk and a setuid-root shell in the user's own folder."""
    code, out, _ = _sh(box, "cd /workspace; mknod blk b 8 0; echo rc=$?; mknod chr c 1 3; echo rc=$?; "
                            "cp /bin/busybox suid; chmod 4755 suid; echo rc=$?; chmod 2755 suid; echo rc=$?; "
                            "mkdir -m 2755 sgid; echo rc=$?; mkfifo fifo; echo fifo=$?; "
                            "cat /dev/null > plain; chmod 755 plain; echo plain=$?")
    assert out.count("rc=0") == 0 and "fifo=0" in out and "plain=0" in out, out
    src = vol["folder"] / "src"
    for p in src.rglob("*"):
        st = p.lstat()
        assert not (stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)), p
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (p, oct(st.st_mode))
    assert (src / "plain").stat().st_mode & 0o777 == 0o755  # ordinary modes still work
    _sh(box, "cd /workspace; rm -rf blk chr suid sgid fifo plain")


def test_what_guest_root_makes_in_a_users_folder_is_that_users(box: BoxCli, vol: dict[str, Path]) -> None:
    """virtiofsd runs in a user namespace whose root is the folder's owner: guest root's
    files are the user's on the host, other guest uids land in a range no host user has."""
    # in a root's folder the map is the identity: owners pass through (chown included)
    assert _sh(box, "touch /workspace/c1 && chown 1234:1234 /workspace/c1")[0] == 0
    assert (vol["folder"] / "src" / "c1").stat().st_uid == 1234
    code, out, err = _sh(box, "echo hi > /owned/made && mkdir /owned/dir && touch /owned/other "
                              "&& chown 1234:1234 /owned/other && stat -c '%u %g' /owned/made")
    assert code == 0, out + err
    assert out.strip() == "0 0"  # the guest sees its own root
    owned = vol["folder"] / "owned"
    assert (owned / "made").stat().st_uid == 1000 and (owned / "made").stat().st_gid == 1000
    assert (owned / "dir").stat().st_uid == 1000
    from a3s_box.jail.userns import SUBORDINATE

    assert (owned / "other").stat().st_uid == SUBORDINATE + 1234
    assert _sh(box, "mknod /owned/blk b 8 0; echo rc=$?")[1].strip() != "rc=0"


def test_box_cp_out_never_makes_a_setuid_file(box: BoxCli, vol: dict[str, Path], tmp_path: Path) -> None:
    assert _sh(box, "mkdir -p /tmp/out/sg && cp /bin/busybox /tmp/out/suid && chmod 6755 /tmp/out/suid "
                    "&& chmod 2755 /tmp/out/sg && mknod /tmp/out/blk b 8 0")[0] == 0
    r = box("cp", "v:/tmp/out", str(tmp_path))
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "suid").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "out" / "sg").stat().st_mode & 0o7777 == 0o755
    assert not (tmp_path / "out" / "blk").exists()


def test_escapes_from_a_bind_leave_the_host_unchanged(box: BoxCli, vol: dict[str, Path]) -> None:
    folder = vol["folder"]
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    _sh(box, "cd /workspace; ln -s ../outside.txt up; echo pwned > up; "
             f"ln -s {folder}/outside.txt abs; echo pwned > abs; "
             "echo pwned > /workspace/../outside.txt; ln /etc/passwd hard; "
             "mkdir -p d; ln -s / d/root; echo pwned > d/root/tmp/escaped; true")
    assert (folder / "outside.txt").read_text() == "must not change\n"
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name != "src"} == \
        {k: v for k, v in before.items() if k != "src"}
    assert not Path("/tmp/escaped").exists() or "pwned" not in Path("/tmp/escaped").read_text()
    assert not (folder / "src" / "hard").exists()  # no hard link across the share's boundary
    # the symlinks exist in the folder, as symlinks: the guest resolved them in its own root
    assert os.readlink(folder / "src" / "up") == "../outside.txt"


def test_tmpfs_and_a_named_volume_are_mounted(box: BoxCli, vol: dict[str, Path]) -> None:
    code, out, err = _sh(box, "mount | grep -E ' /scratch | /root/.cache '; df -k /scratch | tail -1")
    assert "tmpfs on /scratch type tmpfs" in out and "on /root/.cache type ext4" in out
    assert 15000 < int(out.splitlines()[-1].split()[1]) <= 16384


def test_box_cp_round_trips_a_tree_byte_for_byte(box: BoxCli, vol: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "empty").mkdir(parents=True)
    (tree / "link").symlink_to("big.bin")
    with open(tree / "big.bin", "wb") as f:
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    (tree / "small.sh").write_text("#!/bin/sh\necho hi\n")
    (tree / "small.sh").chmod(0o755)
    os.utime(tree / "small.sh", (1_600_000_000, 1_600_000_000))
    r = box("cp", str(tree), "v:/root", timeout=600)
    assert r.code == 0, r.err
    code, out, _ = _sh(box, "sha256sum /root/tree/big.bin; readlink /root/tree/link; "
                            "test -d /root/tree/empty && echo empty-dir; stat -c %a /root/tree/small.sh")
    digest = hashlib.sha256((tree / "big.bin").read_bytes()).hexdigest()
    assert out.split() == [digest, "/root/tree/big.bin", "big.bin", "empty-dir", "755"]
    back = tmp_path / "back"
    back.mkdir()
    r = box("cp", "v:/root/tree", str(back), timeout=600)
    assert r.code == 0, r.err
    got = back / "tree"
    assert hashlib.sha256((got / "big.bin").read_bytes()).hexdigest() == digest
    assert os.readlink(got / "link") == "big.bin" and (got / "empty").is_dir()
    assert (got / "small.sh").stat().st_mode & 0o777 == 0o755
    assert int((got / "small.sh").stat().st_mtime) == 1_600_000_000
    _sh(box, "rm -rf /root/tree")


def test_box_cp_errors_name_the_box_and_path_and_leave_nothing(box: BoxCli, vol: dict[str, Path],
                                                               tmp_path: Path) -> None:
    r = box("cp", "v:/no/such/file", str(tmp_path))
    assert r.code == 1 and "box v: /no/such/file: No such file or directory" in r.err
    assert "Traceback" not in r.err and list(tmp_path.iterdir()) == []
    big = tmp_path / "big"
    big.write_bytes(b"\0" * (40 << 20))
    r = box("cp", str(big), "v:/scratch/big")  # a 16Mi tmpfs
    assert r.code == 1 and "No space left on device" in r.err and "box v" in r.err
    assert "big" not in _sh(box, "ls /scratch")[1]  # no partial file


def test_box_cp_tar_streams(box: BoxCli, vol: dict[str, Path]) -> None:
    import io
    import subprocess
    import sys
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("streamed.txt")
        info.size = 6
        t.addfile(info, io.BytesIO(b"stream"))
    env = box.env
    r = subprocess.run([sys.executable, "-m", "a3s_box.cli", "cp", "-", "v:/tmp"], input=buf.getvalue(),
                       env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "a3s_box.cli", "cp", "v:/tmp/streamed.txt", "-"], env=env,
                       capture_output=True, timeout=120)
    names = tarfile.open(fileobj=io.BytesIO(r.stdout)).getnames()
    assert names == ["streamed.txt"]


def test_the_python_files_api(box: BoxCli, vol: dict[str, Path], tmp_path: Path) -> None:
    with a3s_box.Host(box.home) as host:
        files = host.box("v").files
        files.write("/tmp/api.txt", "data")
        assert files.read("/tmp/api.txt") == b"data"
        names = {e.name: e.kind for e in files.list("/tmp")}
        assert names["api.txt"] == "file" and names["."] == "dir"
        (tmp_path / "up").write_text("uploaded")
        assert files.upload(tmp_path / "up", "/tmp") == "/tmp/up"
        assert files.download("/tmp/up", tmp_path / "down").read_text() == "uploaded"
        files.remove("/tmp/api.txt")
        assert "api.txt" not in {e.name for e in files.list("/tmp")}
        with pytest.raises(a3s_box.FilesError, match="box v: /tmp/api.txt"):
            files.read("/tmp/api.txt")


def test_a_named_volume_survives_recreate_and_delete(box: BoxCli, vol: dict[str, Path]) -> None:
    assert _sh(box, "echo kept > /root/.cache/note")[0] == 0
    override = vol["folder"] / "override.yaml"
    override.write_text("boxes:\n  v:\n    resources: {memory: 208Mi}\n")
    files = ["-f", str(vol["file"]), "-f", str(override)]
    assert box("apply", *files).code == 0
    assert _sh(box, "cat /root/.cache/note")[1] == "kept\n"
    assert box("delete", *files).code == 0  # without --volumes: kept
    ls = box("volume", "ls", "-o", "json", check=True).json()
    assert [v["name"] for v in ls] == ["cache"]
    assert box("apply", *files).code == 0
    assert _sh(box, "cat /root/.cache/note")[1] == "kept\n"
    # a second box mounting it while this one runs is refused, saying why
    second = vol["folder"] / "second.yaml"
    second.write_text("boxes:\n  w:\n    image: hello\n    volumes: [cache:/c]\n"
                      "    namespaces: {agent: {command: [sleep, '100000']}}\n")
    r = box("apply", *files, "-f", str(second))
    assert r.code != 0 and "volume cache is in use by running box v" in r.out + r.err
    r = box("volume", "rm", "cache")
    assert r.code == 1 and "in use by box v" in r.err
    r = box("delete", "--volumes", *files)
    assert r.code == 0 and "volume cache: removed" in r.out
    assert box("volume", "ls", "-o", "json", check=True).json() == []
    assert box("apply", *files).code == 0  # the fixture's box again, with a fresh volume
    assert _sh(box, "cat /root/.cache/note 2>&1 || echo gone")[1].strip().endswith("gone")
    override.unlink()
    second.unlink()
