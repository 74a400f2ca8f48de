"""The state store: what a3s-box created on this host, in SQLite (WAL) under the home.

It records intent and identity (which boxes and pools exist, for which project, with
which spec hash and VM handle); the drivers remain the truth about whether a VM is
actually alive (see observed.py). Writers hold the home's lock (lock.py); readers
need none, WAL gives them a consistent snapshot.

A full disk: a write SQLite cannot make (SQLITE_FULL, or ENOSPC opening the file) is a
DiskFullError naming the home's folder; SQLite has undone the statement, and
`transaction` rolls back the rest of the transaction (unless SQLite already did), so
the store keeps what it had, readable, and writes again once there is space. A store
opened on a disk with no room even for WAL's shared-memory file (the last connection
removed it) and no WAL to replay is opened read-only (`immutable`): `box ps`, `box
image prune` and the like still read it, and every write is that DiskFullError.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a3s_box.disks import space
from a3s_box.errors import DiskFullError, StateError

# Each entry upgrades the schema by one version; never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE boxes (
        id          TEXT PRIMARY KEY,          -- "<project>.<name>", unique on the host
        project     TEXT NOT NULL,
        name        TEXT NOT NULL,
        spec_hash   TEXT NOT NULL,
        spec_json   TEXT NOT NULL,             -- canonical spec, for change reasons
        image       TEXT NOT NULL,             -- image digest the box was built from
        driver      TEXT NOT NULL,
        handle_json TEXT,                      -- drivers.base.VmHandle, NULL before boot
        status      TEXT NOT NULL,             -- creating | running | stopped | failed
        pool        TEXT,                      -- pool name if a pool member
        lease       TEXT,                      -- holder of a leased pool box
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE INDEX boxes_project ON boxes(project);
    CREATE TABLE pools (
        project     TEXT NOT NULL,
        name        TEXT NOT NULL,
        spec_hash   TEXT NOT NULL,
        spec_json   TEXT NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (project, name)
    );
    CREATE TABLE images (
        project     TEXT NOT NULL,
        name        TEXT NOT NULL,             -- key under images: in the Boxfile
        source      TEXT NOT NULL,             -- reference or path
        digest      TEXT NOT NULL,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (project, name)
    );
    CREATE TABLE journal (                     -- in-flight actions, for crash recovery
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        box_id      TEXT NOT NULL,
        action      TEXT NOT NULL,
        detail      TEXT NOT NULL DEFAULT '',
        started_at  REAL NOT NULL
    );
    """,
    # v2: boxes made by `box fork` (which no Boxfile manages: apply leaves them alone) say
    # so ("fork:<source box id>"); status gained parked (a pool member loaded and paused)
    # and paused (box pause)
    """
    ALTER TABLE boxes ADD COLUMN origin TEXT
    """,
    # v3: a box's restart policy (always | on-failure | no; NULL: the default, always), and
    # what the reconcile loop of `box serve` knows of its restarts (for back-off and `box ps`)
    """
    ALTER TABLE boxes ADD COLUMN restart TEXT;
    CREATE TABLE restarts (
        box_id      TEXT PRIMARY KEY,
        count       INTEGER NOT NULL,          -- restarts so far (reset after a long run)
        last_exit   TEXT NOT NULL,             -- why the VM ended last
        exited_at   REAL NOT NULL,             -- when the loop saw it gone
        next_try    REAL NOT NULL              -- not before (back-off), 0 once restarted
    );
    """,
    # v4: sandbox tokens of `box serve` (scoped to templates; the admin token stays in
    # HOME/api-token), and which token a box was leased for (only it may use the box)
    """
    ALTER TABLE boxes ADD COLUMN owner TEXT;
    CREATE TABLE tokens (
        id          TEXT PRIMARY KEY,          -- what the audit log names (a hash prefix)
        digest      TEXT NOT NULL UNIQUE,      -- sha256 of the token (the token is never stored)
        scope       TEXT NOT NULL,             -- sandbox
        templates   TEXT NOT NULL,             -- JSON list: the pools it may acquire from
        name        TEXT NOT NULL DEFAULT '',
        created_at  REAL NOT NULL
    );
    """,
    # v5: the sandboxes the E2B-compatible API made (a3s_box/api/e2b): which box, from which
    # template, the SDK's metadata and environment, the nonce its envd and traffic tokens
    # are derived from (with the server's key: no token is stored), whether its ports are
    # public, and when it times out (then: kill, or pause)
    """
    CREATE TABLE sandboxes (
        box_id         TEXT PRIMARY KEY,
        sandbox_id     TEXT NOT NULL UNIQUE,   -- the box's name: what the SDK calls it
        template       TEXT NOT NULL,
        metadata       TEXT NOT NULL,          -- JSON object of strings
        env            TEXT NOT NULL,          -- JSON object: envVars, for every command
        nonce          TEXT NOT NULL,          -- its tokens are HMACs of this (a3s_box/api/e2b/keys.py)
        public         INTEGER NOT NULL,       -- 1: its ports answer without the traffic token
        started_at     REAL NOT NULL,
        end_at         REAL NOT NULL,
        on_timeout     TEXT NOT NULL           -- kill | pause
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
SQLITE_READONLY = 8


@dataclass(frozen=True)
class BoxRow:
    id: str
    project: str
    name: str
    spec_hash: str
    spec: dict[str, Any]
    image: str
    driver: str
    handle: dict[str, Any] | None
    status: str
    pool: str | None = None
    lease: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    origin: str | None = None  # "fork:<source box id>" for `box fork` boxes
    restart: str | None = None  # always | on-failure | no (None: the default, always)
    owner: str | None = None  # the sandbox token (its id) the box is leased for


@dataclass(frozen=True)
class TokenRow:
    id: str
    digest: str
    scope: str
    templates: tuple[str, ...]
    name: str = ""
    created_at: float = 0.0


@dataclass(frozen=True)
class SandboxRow:
    """A box the E2B-compatible API made, as that API sees it (a3s_box/api/e2b)."""
    box_id: str
    sandbox_id: str
    template: str
    metadata: dict[str, str]
    env: dict[str, str]
    nonce: str
    public: bool
    started_at: float
    end_at: float
    on_timeout: str  # kill | pause


# A VM that serves as soon as asked: running, or a pool member parked (loaded, paused)
LIVE_STATUSES = frozenset({"running", "parked"})


@dataclass(frozen=True)
class PoolRow:
    project: str
    name: str
    spec_hash: str
    spec: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageBinding:
    project: str
    name: str
    source: str
    digest: str


@dataclass(frozen=True)
class RestartRecord:
    """What the reconcile loop knows of a box's VM restarts (unix times)."""

    box_id: str
    count: int
    last_exit: str
    exited_at: float
    next_try: float  # 0: restarted (running since exited_at..)


@dataclass(frozen=True)
class JournalEntry:
    id: int
    box_id: str
    action: str
    detail: str
    started_at: float


def box_id(project: str, name: str) -> str:
    return f"{project}.{name}"


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the executor's worker threads, used under this lock.
        self._lock = threading.RLock()
        deadline = time.monotonic() + 30
        while True:
            try:
                self._open()
                return
            except DiskFullError as full:
                if not self._frozen_readable():
                    raise
                self._open_frozen(full)
                return
            except sqlite3.OperationalError as e:
                # Switching a new file to WAL does not wait for a busy handler: another
                # process creating the same home at this moment makes it fail at once.
                self._db.close()
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise StateError(f"state store {path} is unreadable: {e}") from e
                time.sleep(0.05)
            except sqlite3.DatabaseError as e:
                raise StateError(f"state store {path} is unreadable: {e}") from e

    def _open(self) -> None:
        # Private before SQLite opens it (it gives -wal and -shm the same mode): pool
        # templates and box specs are no one else's business.
        # Only a file that is not there yet is opened here: closing a descriptor of a
        # database this process has open drops every POSIX lock the process holds on it
        # (SQLite's own connections included), which other threads' connections then
        # meet as "disk I/O error".
        with space.full_disk_is_error(f"state store {self.path}", self.path.parent):
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            except FileExistsError:
                pass
        for p in (self.path, self.path.with_name(self.path.name + "-wal"),
                  self.path.with_name(self.path.name + "-shm")):
            try:
                if p.stat().st_mode & 0o077:
                    p.chmod(0o600)
            except FileNotFoundError:
                pass
        self._db = _Locked(sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                           check_same_thread=False), self._lock, self.path)
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _frozen_readable(self) -> bool:
        """The database file holds the whole store: made, and no WAL frames beside it."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            return self.path.stat().st_size > 0 and (not wal.exists() or wal.stat().st_size == 0)
        except OSError:
            return False

    def _open_frozen(self, full: DiskFullError) -> None:
        """Read-only and immutable (no shared memory, no lock: nothing to write them to);
        any write raises a DiskFullError of its own."""
        self._db = _Locked(sqlite3.connect(self.path.absolute().as_uri() + "?immutable=1", uri=True,
                                           isolation_level=None, check_same_thread=False),
                           self._lock, self.path, frozen=True)
        self._db.row_factory = sqlite3.Row
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version != SCHEMA_VERSION:  # to migrate it, it must be written
            self._db.close()
            raise full

    def close(self) -> None:
        self._db.close()

    # --- schema --------------------------------------------------------------
    def _migrate(self) -> None:
        # Read the version inside the write transaction: two `box` processes opening a
        # new home at once must not both create the tables.
        with self.transaction():
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"state store {self.path} has schema version {version}, newer than this "
                    f"a3s-box understands ({SCHEMA_VERSION}); upgrade a3s-box"
                )
            for v in range(version, SCHEMA_VERSION):
                for stmt in _statements(MIGRATIONS[v]):
                    self._db.execute(stmt)
                self._db.execute(f"PRAGMA user_version={v + 1}")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")  # a COMMIT that fails (a full disk) rolls back too
            except BaseException:
                if self._db.in_transaction:  # SQLITE_FULL may have rolled it back already
                    self._db.execute("ROLLBACK")
                raise

    # --- boxes ---------------------------------------------------------------
    def boxes(self, project: str | None = None) -> list[BoxRow]:
        if project is None:
            rows = self._db.execute("SELECT * FROM boxes ORDER BY id").fetchall()
        else:
            rows = self._db.execute(
                "SELECT * FROM boxes WHERE project=? ORDER BY id", (project,)
            ).fetchall()
        return [_box_row(r) for r in rows]

    def box(self, id_: str) -> BoxRow | None:
        r = self._db.execute("SELECT * FROM boxes WHERE id=?", (id_,)).fetchone()
        return _box_row(r) if r else None

    def put_box(self, row: BoxRow) -> None:
        now = time.time()
        self._db.execute(
            """INSERT INTO boxes (id, project, name, spec_hash, spec_json, image, driver,
                   handle_json, status, pool, lease, created_at, updated_at, origin, restart, owner)
               VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(id) DO UPDATE SET name=excluded.name, spec_hash=excluded.spec_hash,
                   spec_json=excluded.spec_json, image=excluded.image, driver=excluded.driver,
                   handle_json=excluded.handle_json, status=excluded.status,
                   pool=excluded.pool, lease=excluded.lease, updated_at=excluded.updated_at,
                   origin=excluded.origin, restart=excluded.restart, owner=excluded.owner""",
            (
                row.id, row.project, row.name, row.spec_hash, _dump(row.spec), row.image,
                row.driver, _dump(row.handle) if row.handle is not None else None, row.status,
                row.pool, row.lease, row.created_at or now, now, row.origin, row.restart, row.owner,
            ),
        )

    def set_box_status(self, id_: str, status: str) -> None:
        self._db.execute(
            "UPDATE boxes SET status=?, updated_at=? WHERE id=?", (status, time.time(), id_)
        )

    def delete_box(self, id_: str) -> None:
        self._db.execute("DELETE FROM boxes WHERE id=?", (id_,))
        self._db.execute("DELETE FROM restarts WHERE box_id=?", (id_,))

    # --- restarts (the reconcile loop's) -----------------------------------------
    def restart_record(self, id_: str) -> RestartRecord | None:
        r = self._db.execute("SELECT * FROM restarts WHERE box_id=?", (id_,)).fetchone()
        return RestartRecord(r["box_id"], r["count"], r["last_exit"], r["exited_at"], r["next_try"]) if r else None

    def put_restart_record(self, rec: RestartRecord) -> None:
        self._db.execute(
            """INSERT INTO restarts (box_id, count, last_exit, exited_at, next_try) VALUES (?,?,?,?,?)
               ON CONFLICT(box_id) DO UPDATE SET count=excluded.count, last_exit=excluded.last_exit,
                   exited_at=excluded.exited_at, next_try=excluded.next_try""",
            (rec.box_id, rec.count, rec.last_exit, rec.exited_at, rec.next_try))

    def delete_restart_record(self, id_: str) -> None:
        self._db.execute("DELETE FROM restarts WHERE box_id=?", (id_,))

    # --- API tokens (sandbox scope; a3s_box/api/access.py decides with them) ---------
    def tokens(self) -> list[TokenRow]:
        rows = self._db.execute("SELECT * FROM tokens ORDER BY created_at, id").fetchall()
        return [_token_row(r) for r in rows]

    def token_by_digest(self, digest: str) -> TokenRow | None:
        r = self._db.execute("SELECT * FROM tokens WHERE digest=?", (digest,)).fetchone()
        return _token_row(r) if r else None

    def put_token(self, row: TokenRow) -> None:
        self._db.execute(
            "INSERT INTO tokens (id, digest, scope, templates, name, created_at) VALUES (?,?,?,?,?,?)",
            (row.id, row.digest, row.scope, _dump(list(row.templates)), row.name, row.created_at or time.time()))

    def delete_token(self, id_: str) -> bool:
        found = self._db.execute("SELECT 1 FROM tokens WHERE id=?", (id_,)).fetchone() is not None
        self._db.execute("DELETE FROM tokens WHERE id=?", (id_,))
        return found

    # --- E2B sandboxes (a3s_box/api/e2b keeps them) ------------------------------------
    def sandboxes(self) -> list[SandboxRow]:
        rows = self._db.execute("SELECT * FROM sandboxes ORDER BY started_at, box_id").fetchall()
        return [_sandbox_row(r) for r in rows]

    def sandbox(self, sandbox_id: str) -> SandboxRow | None:
        r = self._db.execute("SELECT * FROM sandboxes WHERE sandbox_id=?", (sandbox_id,)).fetchone()
        return _sandbox_row(r) if r else None

    def put_sandbox(self, row: SandboxRow) -> None:
        self._db.execute(
            """INSERT INTO sandboxes (box_id, sandbox_id, template, metadata, env, nonce,
                   public, started_at, end_at, on_timeout) VALUES (?,?,?,?,?,?,?,?,?,?)
               ON CONFLICT(box_id) DO UPDATE SET end_at=excluded.end_at, on_timeout=excluded.on_timeout,
                   metadata=excluded.metadata""",
            (row.box_id, row.sandbox_id, row.template, _dump(row.metadata), _dump(row.env), row.nonce,
             int(row.public), row.started_at, row.end_at, row.on_timeout))

    def delete_sandbox(self, box_id: str) -> None:
        self._db.execute("DELETE FROM sandboxes WHERE box_id=?", (box_id,))

    # --- pools ---------------------------------------------------------------
    def pools(self, project: str | None = None) -> list[PoolRow]:
        q = "SELECT * FROM pools" + (" WHERE project=?" if project is not None else "")
        rows = self._db.execute(q + " ORDER BY project, name", (project,) if project is not None else ())
        return [PoolRow(r["project"], r["name"], r["spec_hash"], json.loads(r["spec_json"])) for r in rows]

    def put_pool(self, row: PoolRow) -> None:
        self._db.execute(
            """INSERT INTO pools (project, name, spec_hash, spec_json, updated_at) VALUES (?,?,?,?,?)
               ON CONFLICT(project, name) DO UPDATE SET spec_hash=excluded.spec_hash,
                   spec_json=excluded.spec_json, updated_at=excluded.updated_at""",
            (row.project, row.name, row.spec_hash, _dump(row.spec), time.time()),
        )

    def delete_pool(self, project: str, name: str) -> None:
        self._db.execute("DELETE FROM pools WHERE project=? AND name=?", (project, name))

    # --- image bindings ------------------------------------------------------
    def image_bindings(self, project: str | None = None) -> list[ImageBinding]:
        q = "SELECT * FROM images" + (" WHERE project=?" if project is not None else "")
        rows = self._db.execute(q + " ORDER BY project, name", (project,) if project is not None else ())
        return [ImageBinding(r["project"], r["name"], r["source"], r["digest"]) for r in rows]

    def put_image_binding(self, b: ImageBinding) -> None:
        self._db.execute(
            """INSERT INTO images (project, name, source, digest, updated_at) VALUES (?,?,?,?,?)
               ON CONFLICT(project, name) DO UPDATE SET source=excluded.source,
                   digest=excluded.digest, updated_at=excluded.updated_at""",
            (b.project, b.name, b.source, b.digest, time.time()),
        )

    def delete_image_binding(self, project: str, name: str) -> None:
        self._db.execute("DELETE FROM images WHERE project=? AND name=?", (project, name))

    def images_in_use(self) -> set[str]:
        """Digests that a box on this host was built from (never evicted)."""
        return {r[0] for r in self._db.execute("SELECT DISTINCT image FROM boxes")}

    # --- journal -------------------------------------------------------------
    def journal_begin(self, box_id: str, action: str, detail: str = "") -> int:
        cur = self._db.execute(
            "INSERT INTO journal (box_id, action, detail, started_at) VALUES (?,?,?,?)",
            (box_id, action, detail, time.time()),
        )
        return int(cur.lastrowid or 0)

    def journal_end(self, entry_id: int) -> None:
        self._db.execute("DELETE FROM journal WHERE id=?", (entry_id,))

    def journal(self) -> list[JournalEntry]:
        rows = self._db.execute("SELECT * FROM journal ORDER BY id").fetchall()
        return [JournalEntry(r["id"], r["box_id"], r["action"], r["detail"], r["started_at"]) for r in rows]


class _Locked:
    """A sqlite3 connection whose calls are serialised by a lock; results are fetched
    inside the lock so no cursor is shared between threads. SQLITE_FULL becomes
    DiskFullError here, the one place every statement goes through."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, path: Path, frozen: bool = False) -> None:
        self._conn = db
        self._lock = lock
        self._path = path
        self._frozen = frozen  # opened read-only for want of space: a write is a full disk

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    @property
    def row_factory(self) -> Any:
        return self._conn.row_factory

    @row_factory.setter
    def row_factory(self, value: Any) -> None:
        self._conn.row_factory = value

    def execute(self, sql: str, params: Any = ()) -> "_Result":
        what = f"state store {self._path}"
        with self._lock, space.full_disk_is_error(what, self._path.parent):
            try:
                cur = self._conn.execute(sql, params)
            except sqlite3.OperationalError as e:
                if self._frozen and (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == SQLITE_READONLY:
                    raise space.disk_full(what, self._path.parent) from e
                raise
            return _Result(cur.fetchall(), cur.lastrowid)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Result:
    def __init__(self, rows: list[Any], lastrowid: int | None) -> None:
        self._rows = rows
        self.lastrowid = lastrowid

    def fetchall(self) -> list[Any]:
        return self._rows

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip() and not s.strip().startswith("--")]


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _token_row(r: sqlite3.Row) -> TokenRow:
    return TokenRow(r["id"], r["digest"], r["scope"], tuple(json.loads(r["templates"])), r["name"], r["created_at"])


def _sandbox_row(r: sqlite3.Row) -> SandboxRow:
    return SandboxRow(r["box_id"], r["sandbox_id"], r["template"], json.loads(r["metadata"]), json.loads(r["env"]),
                      r["nonce"], bool(r["public"]), r["started_at"], r["end_at"], r["on_timeout"])


def _box_row(r: sqlite3.Row) -> BoxRow:
    return BoxRow(
        id=r["id"], project=r["project"], name=r["name"], spec_hash=r["spec_hash"],
        spec=json.loads(r["spec_json"]), image=r["image"], driver=r["driver"],
        handle=json.loads(r["handle_json"]) if r["handle_json"] else None,
        status=r["status"], pool=r["pool"], lease=r["lease"],
        created_at=r["created_at"], updated_at=r["updated_at"], origin=r["origin"],
        restart=r["restart"], owner=r["owner"],
    )
