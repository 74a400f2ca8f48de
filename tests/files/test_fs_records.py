"""The records of the guest's /.a3s/fs, parsed on the host (a3s_box.files.records), and
BoxFiles against a hostile guest: no VM and no root needed.

The guest is hostile: whatever bytes it sends, in whatever pieces, the parser returns
records or raises FilesError (never anything else), holds at most MAX_RECORD bytes of
an unfinished record, and a guest that will not stop is stopped."""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from a3s_box.files import BoxFiles, FilesError, FsEntry
from a3s_box.files import records
from a3s_box.files.records import MAX_RECORD, RecordParser
from a3s_box.guest.protocol import ExecRequest, ExitKind, ExitStatus

_CODES = {"file": b"f", "dir": b"d", "symlink": b"l", "other": b"o"}
_names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=60)


def encode(e: FsEntry) -> bytes:
    """An entry as the guest writes it."""
    fields = [_CODES[e.kind], b"%o" % e.mode, b"%d" % e.size, b"%d" % e.mtime_ns, b"%d" % e.uid,
              b"%d" % e.gid, e.owner.encode(), e.group.encode(), e.path.encode(),
              (e.target or "").encode()]
    return b"".join(f + b"\0" for f in fields)


@st.composite
def entries(draw: st.DrawFn) -> FsEntry:
    kind = draw(st.sampled_from(sorted(_CODES)))
    return FsEntry(kind=kind, mode=draw(st.integers(0, 0o7777)), size=draw(st.integers(0, 2**63 - 1)),
                   mtime_ns=draw(st.integers(-(2**63 - 1), 2**63 - 1)), uid=draw(st.integers(0, 2**32 - 1)),
                   gid=draw(st.integers(0, 2**32 - 1)), owner=draw(_names), group=draw(_names),
                   path="/" + draw(_names), target=draw(_names) if kind == "symlink" else None)


def pieces(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    at = 0
    for c in sorted({min(c, len(data)) for c in cuts}):
        yield data[at:c]
        at = c
    yield data[at:]


def parse_all(p: RecordParser, chunks: Iterable[bytes]) -> list[tuple[bytes, ...]]:
    out = []
    for c in chunks:
        out += p.feed(c)
        assert len(p._rest) + p._size <= p.max_record
    p.close()
    return out


# --- the parser ---------------------------------------------------------------------------
@settings(deadline=None)  # a busy 2-core host (VM tests beside) is slow, not wrong
@given(st.lists(entries(), max_size=8), st.lists(st.integers(0, 4000), max_size=30))
def test_entries_round_trip_in_any_pieces(es: list[FsEntry], cuts: list[int]) -> None:
    stream = b"".join(encode(e) for e in es)
    got = parse_all(RecordParser(records.ENTRY_FIELDS), pieces(stream, cuts))
    assert [records.entry(r) for r in got] == es


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=20),
       st.sampled_from([records.ENTRY_FIELDS, records.EVENT_FIELDS]), st.integers(1, 200))
def test_any_bytes_give_records_or_files_error(data: bytes, cuts: list[int], fields: int, cap: int) -> None:
    p = RecordParser(fields, max_record=cap)
    try:
        got = parse_all(p, pieces(data, cuts))
    except FilesError:
        return
    for r in got:
        assert len(r) == fields and sum(len(f) + 1 for f in r) <= cap
        try:
            records.entry(r) if fields == records.ENTRY_FIELDS else records.event(r)
        except FilesError:
            pass


@settings(deadline=None)
@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\0" not in b), min_size=10, max_size=10))
def test_hostile_fields_are_refused_only_with_files_error(fields: list[bytes]) -> None:
    try:
        e = records.entry(tuple(fields))
    except FilesError:
        return
    assert e.kind in ("file", "dir", "symlink", "other") and 0 <= e.mode <= 0o7777 and e.path.startswith("/")


@pytest.mark.parametrize("size", [b"+1", b" 1", b"1_0", b"0x1", b"-1", b"", b"1" * 21, "١".encode()])
def test_numbers_are_read_strictly(size: bytes) -> None:
    fields = (b"f", b"644", size, b"0", b"0", b"0", b"root", b"root", b"/x", b"")
    with pytest.raises(FilesError, match="bad size"):
        records.entry(fields)


@pytest.mark.parametrize("fields, why", [
    ((b"x", b"644", b"1", b"0", b"0", b"0", b"r", b"r", b"/x", b""), "bad entry type"),
    ((b"f", b"0o644", b"1", b"0", b"0", b"0", b"r", b"r", b"/x", b""), "bad mode"),
    ((b"f", b"17777", b"1", b"0", b"0", b"0", b"r", b"r", b"/x", b""), "bad mode"),
    ((b"f", b"644", b"1", b"0", b"0", b"0", b"r", b"r", b"x", b""), "not absolute"),
    ((b"f", b"644", b"1", b"0", b"0", b"0", b"r", b"r", b"/x", b"/"), "symlink target for a file"),
    ((b"f", b"644"), "2 fields"),
])
def test_malformed_entries(fields: tuple[bytes, ...], why: str) -> None:
    with pytest.raises(FilesError, match=why):
        records.entry(fields)


def test_a_record_over_the_cap_is_refused_and_nothing_is_kept() -> None:
    p = RecordParser(records.ENTRY_FIELDS)
    p.feed(b"f\x00644\x00")
    with pytest.raises(FilesError, match="over 64 KiB"):
        for _ in range(100):
            p.feed(b"a" * 1000)
    assert p._rest == b"" and p._done == []
    with pytest.raises(FilesError, match="over 64 KiB"):
        p.feed(b"\0")  # broken for good


def test_a_record_cut_short_is_an_error_at_the_end() -> None:
    p = RecordParser(records.EVENT_FIELDS)
    assert p.feed(b"ready\0\0create\0a\0write\0") == [(b"ready", b""), (b"create", b"a")]
    with pytest.raises(FilesError, match="middle of a record"):
        p.close()


@pytest.mark.parametrize("fields", [(b"mkdir", b"a"), (b"create", b""), (b"create", b"/etc"), (b"ready", b"")])
def test_bad_events(fields: tuple[bytes, bytes]) -> None:
    with pytest.raises(FilesError):
        records.event(fields)


# --- BoxFiles against a hostile guest -------------------------------------------------------
class FakeSession:
    """A guest process that writes STDOUT (chunks, or an endless iterator) and exits with
    CODE; SIGKILL stops it at once, as the guest would."""

    def __init__(self, out: Callable[[bytes], None], stdout: Iterable[bytes], code: int, stderr: bytes,
                 err: Callable[[bytes], None]) -> None:
        self.signals: list[int] = []
        self._killed = threading.Event()
        self._over = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._status = ExitStatus(ExitKind.EXITED, code)
        self._lock = threading.Lock()
        threading.Thread(target=self._run, args=(out, stdout, err, stderr), daemon=True).start()

    def _run(self, out: Callable[[bytes], None], stdout: Iterable[bytes], err: Callable[[bytes], None],
             stderr: bytes) -> None:
        for chunk in stdout:
            if self._killed.is_set():
                self._status = ExitStatus(ExitKind.SIGNALED, signal.SIGKILL)
                break
            out(chunk)
        err(stderr)
        with self._lock:
            self._over.set()
            callbacks = list(self._callbacks)
        for fn in callbacks:
            fn()

    @property
    def done(self) -> bool:
        return self._over.is_set()

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if not self._over.is_set():
                self._callbacks.append(fn)
                return
        fn()

    def signal(self, signo: int) -> None:
        self.signals.append(signo)
        if signo == signal.SIGKILL:
            self._killed.set()

    def wait(self, timeout: float | None = None) -> ExitStatus:
        assert self._over.wait(timeout), "the fake guest did not end"
        return self._status


class FakeClient:
    def __init__(self, stdout: Iterable[bytes], code: int = 0, stderr: bytes = b"") -> None:
        self.stdout, self.code, self.stderr = stdout, code, stderr
        self.sessions: list[FakeSession] = []
        self.requests: list[ExecRequest] = []

    def start(self, req: ExecRequest, on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]) -> Any:
        self.requests.append(req)
        s = FakeSession(on_stdout, self.stdout, self.code, self.stderr, on_stderr)
        self.sessions.append(s)
        return s


_GOOD = encode(FsEntry("file", 0o644, 1, 0, 0, 0, "root", "root", "/p", None))


@pytest.mark.parametrize("stdout, why", [
    ([b"f\0" + b"x" * 70_000], "over 64 KiB"),
    ([_GOOD[:-3]], "middle of a record"),
    ([_GOOD.replace(b"644", b"999")], "bad mode"),
    ([b""], "no entry"),
    ([_GOOD, _GOOD], "more than 1 entries"),
])
def test_stat_of_a_hostile_answer_names_box_and_path(stdout: list[bytes], why: str) -> None:
    c = FakeClient(stdout)
    with pytest.raises(FilesError, match=rf"^box b: /p: .*{why}"):
        BoxFiles(c, "b").stat("/p")
    assert c.requests[0].argv == ("/.a3s/fs", "stat", "/p")


def test_a_walk_that_never_ends_is_stopped_at_its_limit() -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield _GOOD * 100
    c = FakeClient(endless())
    with pytest.raises(FilesError, match=r"^box b: /: more than 1000 entries$"):
        BoxFiles(c, "b").walk("/", 3, limit=1000)
    assert c.sessions[0].signals == [signal.SIGKILL]
    assert c.requests[0].argv == ("/.a3s/fs", "ls", "3", "/")


def test_a_failure_says_the_guests_last_words_capped() -> None:
    c = FakeClient([], code=1, stderr=b"warning\n/p/q: Permission denied\n")
    with pytest.raises(FilesError, match=r"^box b: /p/q: Permission denied$"):
        BoxFiles(c, "b").make_dir("/p/q/")
    c = FakeClient([], code=1, stderr=b"x" * 10_000_000)
    with pytest.raises(FilesError) as e:
        BoxFiles(c, "b").move("/a", "/b")
    assert len(str(e.value)) < 400


def test_mkdir_output_is_not_expected() -> None:
    with pytest.raises(FilesError, match="nobody asked for"):
        BoxFiles(FakeClient([b"surprise"]), "b").make_dir("/d")


def test_a_watch_must_begin_with_ready() -> None:
    c = FakeClient([b"create\0x\0"])
    with pytest.raises(FilesError, match=r"^box b: /w: .*not ready"):
        BoxFiles(c, "b").watch("/w", True, lambda k, n: None)
    assert c.requests[0].argv == ("/.a3s/fs", "watch", "-r", "/w")


def test_a_watch_that_turns_hostile_is_stopped() -> None:
    got: list[tuple[str, str]] = []
    gate = threading.Event()

    def stream() -> Iterator[bytes]:
        yield b"ready\0\0"
        gate.wait(10)
        yield b"create\0ok\0"
        yield b"explode\0x\0"
        while True:
            yield b"create\0more\0"
    c = FakeClient(stream())
    w = BoxFiles(c, "b").watch("/w", False, lambda k, n: got.append((k, n)))
    gate.set()
    with pytest.raises(FilesError, match=r"^box b: /w: the guest sent an unknown event"):
        w.wait(10)
    assert got == [("create", "ok")]
    assert c.sessions[0].signals[:1] == [signal.SIGKILL]
