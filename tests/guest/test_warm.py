"""A template's page cache warmed at PREPARE (guest/init/warm.c), against the real init.

The init runs on the host (tests/guest/conftest.py), so the host's root stands in for an
image's: the host's programs are what a well-formed image has, and the files these tests
write are what a hostile image could put in its own PATH (a FIFO, links into /proc and
/dev, ELF headers that lie, #! loops). Warming is a cache: whatever it meets, PREPARE
answers, and nothing it should not read is read.

Every test runs against the shipped init (musl) and the same sources built with
AddressSanitizer and UBSan (tests/csanitize.py): warm.c parses ELF and #! headers from the
image as PID 1.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from a3s_box.guest import protocol as p
from a3s_box.errors import GuestError
from a3s_box.guest.build import SOURCES
from a3s_box.guest.client import GuestClient
from a3s_box.guest.local import spawn_local_guest
from a3s_box.guest.protocol import Isolate, Prepared
from tests.csanitize import SANITIZED, build_sanitized, sanitizer_env, sanitizer_reports

ISOLATION = int(Isolate.MOUNT | Isolate.PID | Isolate.IPC | Isolate.UTS)
WARM_MAX_KIB = 64 << 10  # warm.c's WARM_MAX_BYTES
WARM_MAX_ENTRIES = 16384  # and WARM_MAX_ENTRIES


@pytest.fixture(scope="module", params=["musl", SANITIZED])
def init_binary(request: pytest.FixtureRequest, guest_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param == SANITIZED:
        return build_sanitized(SOURCES, tmp_path_factory.mktemp("asan"), "init")
    return guest_binary


class Warmed:
    def __init__(self, prepared: Prepared, console: str) -> None:
        self.prepared = prepared
        self.console = console
        self.paths = re.findall(r"warmed (\S+) \(\d+ KiB\)", console)


Prepare = Callable[[str, tuple[str, ...]], Warmed]


@pytest.fixture
def prepare(init_binary: Path, tmp_path: Path) -> Iterator[Prepare]:
    """PREPARE sent to a fresh init; what it warmed. Fails on any sanitizer report."""
    runs = iter(range(1000))

    def run(path: str, warm: tuple[str, ...]) -> Warmed:
        n = next(runs)
        state, log_base = tmp_path / f"state{n}", tmp_path / f"sanitizer{n}"
        state.mkdir()
        console = tmp_path / f"console{n}.log"
        old = dict(os.environ)
        os.environ.update(sanitizer_env(log_base))
        try:
            with open(console, "wb") as log:
                proc, sock = spawn_local_guest(init_binary, "--state-dir", str(state), stderr=log.fileno())
        finally:
            os.environ.clear()
            os.environ.update(old)
        client = GuestClient(sock, "warm")
        try:
            client.hello(10)
            prepared = client.prepare(ISOLATION, path, warm, timeout=30)
        finally:
            client.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert sanitizer_reports(log_base, console) == ""
        return Warmed(prepared, console.read_text(errors="replace"))

    yield run


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A folder of the test's on the root's own file system (warming reads nothing else)."""
    folder = tmp_path / "image"
    folder.mkdir()
    if folder.stat().st_dev != Path("/").stat().st_dev:
        pytest.skip("the test's folder is not on the root's file system, the only one warming reads")
    return folder


def _interp(program: str) -> str:
    data = Path(program).read_bytes()
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    for i in range(phnum):
        kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if kind == 3:  # PT_INTERP
            return data[offset:offset + size].rstrip(b"\0").decode()
    raise AssertionError(f"{program} has no interpreter")


def _kib(paths: list[str]) -> int:
    return sum(os.stat(path).st_size for path in paths) >> 10


def test_a_dynamic_program_is_warmed_with_its_loader_and_libraries(prepare: Prepare, image: Path) -> None:
    true = shutil.which("true", path="/usr/bin")
    assert true is not None
    w = prepare(f"{image}/empty::/usr/bin", ("true",))  # found as execvp finds it
    assert w.paths[0] == true
    assert _interp(true) in w.paths
    assert any(path.endswith("/libc.so.6") for path in w.paths), w.paths
    assert len(w.paths) == len(set(w.paths))
    assert w.prepared.warmed_kib == _kib(w.paths)
    assert w.prepared.settled_ms is None  # not a VM's PID 1: nothing settles


def test_a_script_warms_its_interpreter_and_the_command_env_runs(prepare: Prepare, image: Path) -> None:
    (image / "bin").mkdir()
    agent = image / "bin" / "agent"
    agent.write_text("#!/usr/bin/env  true --flag\necho never run\n")
    agent.chmod(0o755)
    w = prepare(f"{image}/bin:/usr/bin", ("agent",))
    assert w.paths[:2] == [str(agent), "/usr/bin/env"], w.paths  # then env's loader and libraries
    assert "/usr/bin/true" in w.paths


def test_the_first_executable_in_path_is_warmed_and_a_missing_command_is_not(prepare: Prepare, image: Path) -> None:
    for name, mode in (("a", 0o644), ("b", 0o755)):
        (image / name).mkdir()
        (image / name / "tool").write_text("#!/bin/false\n")
        (image / name / "tool").chmod(mode)
    w = prepare(f"{image}/a:{image}/b", ("tool", "no-such-command", f"{image}/a/missing"))
    assert w.paths[:2] == [f"{image}/b/tool", "/bin/false"], w.paths


@pytest.mark.parametrize("kind", ["fifo", "proc", "device", "folder", "dangling"])
def test_what_is_not_a_regular_file_of_the_root_is_not_read(prepare: Prepare, image: Path, kind: str) -> None:
    tool = image / "tool"
    if kind == "fifo":
        os.mkfifo(tool, 0o755)  # opened without blocking, then passed over
    elif kind == "proc":
        tool.symlink_to("/proc/self/status")  # a regular file, of another file system
    elif kind == "device":
        tool.symlink_to("/dev/zero")
    elif kind == "folder":
        tool.mkdir()
    else:
        tool.symlink_to(image / "nowhere")
    w = prepare(str(image), ("tool", str(tool)))
    assert w.paths == [] and w.prepared.warmed_kib == 0


def test_interpreter_loops_and_chains_end(prepare: Prepare, image: Path) -> None:
    (image / "a").write_text(f"#!{image}/b\n")
    (image / "b").write_text(f"#!{image}/a\n")
    chain = [image / f"s{i}" for i in range(7)]
    for here, there in zip(chain, chain[1:]):
        here.write_text(f"#!{there}\n")
    chain[-1].write_text("the end\n")
    w = prepare("", (str(image / "a"), str(chain[0])))
    assert w.paths[:2] == [str(image / "a"), str(image / "b")]
    assert w.paths[2:] == [str(s) for s in chain[:5]]  # the command and four interpreters deep


def test_what_is_read_is_bounded(prepare: Prepare, image: Path) -> None:
    big = image / "big"
    with open(big, "wb") as f:
        f.truncate((WARM_MAX_KIB + 1024) << 10)  # sparse: read as zeros
    small = image / "small"
    small.write_text("#!/bin/true\n")
    w = prepare("", (str(big), str(small)))
    assert w.paths == [str(big)] and w.prepared.warmed_kib == WARM_MAX_KIB


def _entries(w: Warmed) -> int:
    said = re.findall(r"warmed (\d+) entries of PATH's folders", w.console)
    return int(said[0]) if said else 0


def test_the_entries_of_path_folders_are_looked_up(prepare: Prepare, image: Path) -> None:
    for folder, names in (("bin", ["sh", "sleep", "true"]), ("sbin", ["init"])):
        (image / folder).mkdir()
        for name in names:
            (image / folder / name).symlink_to("/no/such/target")  # looked at, not followed
    w = prepare(f"{image}/bin::{image}/none:{image}/sbin", ())
    assert _entries(w) == 4 and w.paths == []


def test_path_folders_elsewhere_than_the_root_file_system_are_not_read(prepare: Prepare, image: Path) -> None:
    (image / "proc").symlink_to("/proc")
    w = prepare(f"/proc:/dev:/sys:{image}/proc", ())
    assert _entries(w) == 0


def test_path_folders_entries_are_bounded(prepare: Prepare, image: Path) -> None:
    for folder in ("a", "b"):
        (image / folder).mkdir()
        for i in range(WARM_MAX_ENTRIES // 2 + 10):
            (image / folder / str(i)).touch()
    w = prepare(f"{image}/a:{image}/b", ())
    assert _entries(w) == WARM_MAX_ENTRIES


def _elf(phdrs: list[tuple[int, int, int, int]], tail: bytes = b"", phoff: int = 64, phnum: int | None = None,
         phentsize: int = 56) -> bytes:
    """An ELF64 header and program headers (type, offset, vaddr, filesz), then TAIL."""
    n = len(phdrs) if phnum is None else phnum
    head = (b"\x7fELF\x02\x01\x01" + bytes(9) +
            struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, phoff, 0, 0, 64, phentsize, n, 0, 0, 0))
    table = b"".join(struct.pack("<IIQQQQQQ", kind, 4, off, vaddr, vaddr, size, size, 8)
                     for kind, off, vaddr, size in phdrs)
    return head + table + tail


PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NEEDED, DT_STRTAB, DT_STRSZ = 1, 5, 10


def _dynamic(needed: list[int], strtab: int, strsz: int) -> bytes:
    entries = [(DT_NEEDED, n) for n in needed] + [(DT_STRTAB, strtab), (DT_STRSZ, strsz), (0, 0)]
    return b"".join(struct.pack("<qQ", tag, value) for tag, value in entries)


def _with_needed(names: list[bytes], needed: list[int] | None = None, strsz: int | None = None,
                 strtab_vaddr: int | None = None) -> bytes:
    """An ELF whose dynamic segment needs NAMES (or the string offsets NEEDED) from a
    string table of STRSZ bytes (default: its own) at STRTAB_VADDR (default: where it
    is, in a PT_LOAD of the whole file at 0x1000)."""
    strings = b"\0" + b"".join(name + b"\0" for name in names)
    offsets = needed if needed is not None else [strings.index(b"\0" + n + b"\0") + 1 for n in names]
    base = 64 + 3 * 56
    dyn_len = (len(offsets) + 3) * 16
    strtab = 0x1000 + base + dyn_len if strtab_vaddr is None else strtab_vaddr
    dyn = _dynamic(offsets, strtab, len(strings) if strsz is None else strsz)
    body = dyn + strings
    return _elf([(PT_LOAD, 0, 0x1000, base + len(body)), (PT_DYNAMIC, base, 0x1000 + base, len(dyn)),
                 (0, 0, 0, 0)], body)


def _libc() -> str:
    for folder in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu"):
        if Path(folder, "libc.so.6").exists():
            return f"{folder}/libc.so.6"
    pytest.skip("no libc.so.6 in the usual folders")


def test_a_crafted_elf_warms_what_it_needs(prepare: Prepare, image: Path) -> None:
    tool = image / "tool"
    tool.write_bytes(_with_needed([b"libc.so.6", b"no-such-lib.so", b"../../etc/passwd"]))
    w = prepare("", (str(tool),))
    assert w.paths[:2] == [str(tool), _libc()]
    assert "/etc/passwd" not in w.paths


LYING = {
    "program headers past the end": _elf([(PT_INTERP, 0, 0, 10)], phoff=1 << 40),
    "too many program headers": _elf([(PT_INTERP, 0, 0, 10)] * 65),
    "wrong header size": _elf([(PT_INTERP, 0, 0, 10)], phentsize=32),
    "interpreter past the end": _elf([(PT_INTERP, 1 << 40, 0, 20)]),
    "interpreter not terminated": _elf([(PT_INTERP, 120, 0, 11)], b"/bin/falsee"),
    "interpreter too long": _elf([(PT_INTERP, 120, 0, 300)], b"/" * 299 + b"\0"),
    "interpreter relative": _elf([(PT_INTERP, 120, 0, 10)], b"bin/false\0"),
    "interpreter is itself": b"",  # filled in by the test
    "dynamic past the end": _elf([(PT_DYNAMIC, 1 << 40, 0, 1 << 20)]),
    "string table unmapped": _with_needed([b"libc.so.6"], strtab_vaddr=0x900000),
    "needed past the strings": _with_needed([b"libc.so.6"], needed=[1 << 40]),
    "strings longer than the file": _with_needed([b"libc.so.6"], strsz=1 << 40, needed=[1 << 39]),
    "name not terminated": _with_needed([b"x" * 300]),
}


@pytest.mark.parametrize("case", sorted(LYING))
def test_lying_elf_headers_are_passed_over(prepare: Prepare, image: Path, case: str) -> None:
    tool = image / "tool"
    data = LYING[case] or _elf([(PT_INTERP, 120, 0, len(str(tool)) + 1)], str(tool).encode() + b"\0")
    tool.write_bytes(data)
    w = prepare("", (str(tool),))
    assert w.paths == [str(tool)]  # read, and nothing it names
    assert w.prepared.warmed_kib == len(data) >> 10


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(noise=st.binary(max_size=2048), interp=st.booleans())
def test_noise_after_an_elf_header_is_survived(prepare: Prepare, image: Path, noise: bytes, interp: bool) -> None:
    tool = image / "tool"
    head = _elf([(PT_INTERP if interp else PT_DYNAMIC, 120, 0, len(noise))] * 2)
    tool.write_bytes(head[:120] + noise)
    w = prepare("", (str(tool),))
    assert w.paths[0] == str(tool)


@pytest.mark.parametrize("payload", [
    p.Writer().u32(ISOLATION).str("/bin").strlist(["sh"] * (p.PREPARE_MAX_WARM + 1)).strlist([]).bytes(),
    p.Writer().u32(ISOLATION).str("/bin").u32(2).str("sh").bytes(),  # one of two
    p.Writer().u32(ISOLATION).bytes(),  # no PATH, no commands
])
def test_a_bad_warm_list_is_refused(init_binary: Path, tmp_path: Path, payload: bytes) -> None:
    proc, sock = spawn_local_guest(init_binary, "--state-dir", str(tmp_path))
    client = GuestClient(sock, "warm")
    try:
        client.hello(10)
        with pytest.raises(GuestError, match="bad PREPARE payload"):
            client._ctl_request(p.encode(p.MsgType.PREPARE, 0, payload), 5, "prepare")
        assert client.prepare(ISOLATION, "/usr/bin", ("true",)).warmed_kib > 0  # a refused one did nothing
    finally:
        client.close()
        proc.wait(timeout=10)
