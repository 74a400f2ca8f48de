"""What a COPY or ADD takes from the build context (or from another stage's tree), and
the layer it makes.

Sources are patterns relative to the context root; matches are filtered by
.dockerignore (context sources only) and may not leave the root (`..`, a symlink
pointing out). A source folder's contents go into the destination; a file goes to the
destination path, or into it when the destination ends in `/`, names a folder, or
several sources are given (Docker's rules). Modes, mtimes and symlinks (not followed
below the top) are kept; --chown and --chmod override owner and mode of what is copied.
The content hash (names, types, modes, sizes, bytes, link targets: not mtimes, as
BuildKit) is what the cache keys a COPY by."""
from __future__ import annotations

import glob
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from a3s_box.imagebuild.ignore import IgnoreRules

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class SourceError(Exception):
    """A COPY/ADD source is missing or outside the context (the builder locates it)."""


@dataclass(frozen=True)
class Entry:
    """One path of the layer: where it goes and where its content comes from."""

    dest: str  # relative to the image root, POSIX
    source: Path | None  # None: a folder made for the destination (or inline content)
    archive_member: str = ""  # ADD: a member of the archive at `source`
    inline: bytes | None = None  # COPY <<EOF: a file (0644) with this content


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int


def _inside(root: Path, p: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def resolve_sources(root: Path, patterns: list[str], rules: IgnoreRules | None) -> list[Path]:
    """The paths PATTERNS match under ROOT, in pattern order, each once."""
    out: list[Path] = []
    for pat in patterns:
        clean = os.path.normpath(pat.lstrip("/")) if pat not in ("", ".", "/") else "."
        if clean == ".." or clean.startswith("../"):
            raise SourceError(f"{pat}: outside the build context")
        if glob.has_magic(clean):
            hits = sorted(glob.glob(clean, root_dir=root, recursive=False))
            hits = [h for h in hits if rules is None or not rules.ignored(PurePosixPath(h).as_posix())]
            if not hits:
                raise SourceError(f"{pat}: no file in the build context matches")
            paths = [root / h for h in hits]
        else:
            p = root / clean
            rel = PurePosixPath(clean).as_posix()
            if not os.path.lexists(p) or (rules is not None and clean != "." and rules.ignored(rel)):
                raise SourceError(f"{pat}: not found in the build context" +
                                  (" (excluded by .dockerignore)" if os.path.lexists(p) else ""))
            paths = [p]
        for p in paths:
            if not _inside(root, p):
                raise SourceError(f"{pat}: points outside the build context ({p} -> {os.path.realpath(p)})")
            if p not in out:
                out.append(p)
    return out


def plan_entries(root: Path, sources: list[Path], dest: str, dest_is_dir: bool,
                 rules: IgnoreRules | None, extract: bool = False) -> list[Entry]:
    """The layer's paths for SOURCES copied to DEST (absolute in the image)."""
    dest_rel = dest.strip("/")
    into_dir = dest_is_dir or dest.endswith("/") or len(sources) > 1
    entries: list[Entry] = []
    for src in sources:
        real = Path(os.path.realpath(src)) if src.is_symlink() else src  # the top is followed
        if real.is_dir():
            entries += _tree_entries(root, real, dest_rel, rules)
        elif extract and src.name.endswith(ARCHIVE_SUFFIXES) and tarfile.is_tarfile(real):
            entries += _archive_entries(real, dest_rel)
        else:
            target = _join(dest_rel, src.name) if into_dir else dest_rel
            entries.append(Entry(target, real))
    return entries


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _tree_entries(root: Path, folder: Path, dest_rel: str, rules: IgnoreRules | None) -> list[Entry]:
    # the destination folder itself is made (0755), not a copy of the source folder's entry
    out = [Entry(dest_rel, None)] if dest_rel else []
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        here = Path(dirpath)
        for name in sorted(dirs + files):
            p = here / name
            if rules is not None and _inside(root, p) and rules.ignored(p.relative_to(root).as_posix()):
                if name in dirs:
                    dirs.remove(name)
                continue
            out.append(Entry(_join(dest_rel, p.relative_to(folder).as_posix()), p))
    return out


def _archive_entries(archive: Path, dest_rel: str) -> list[Entry]:
    out = []
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            name = PurePosixPath(m.name)
            if name.is_absolute() or ".." in name.parts:
                raise SourceError(f"{archive.name}: member {m.name!r} would land outside its destination")
            if str(name) in ("", "."):
                continue
            out.append(Entry(_join(dest_rel, name.as_posix()), archive, archive_member=m.name))
    return out


def content_hash(entries: list[Entry]) -> str:
    """What a COPY's cache key holds of its sources: names, types, modes, sizes, bytes."""
    h = hashlib.sha256()
    for e in entries:
        h.update(e.dest.encode() + b"\0")
        if e.inline is not None:
            h.update(b"inline:" + hashlib.sha256(e.inline).hexdigest().encode())
            continue
        if e.source is None:
            h.update(b"dir\0")
            continue
        if e.archive_member:
            h.update(f"archive:{e.archive_member}\0".encode() + _file_digest(e.source).encode())
            continue
        st = os.lstat(e.source)
        h.update(f"{stat.S_IFMT(st.st_mode)}:{stat.S_IMODE(st.st_mode)}:{st.st_size}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(e.source).encode())
        elif stat.S_ISREG(st.st_mode):
            h.update(_file_digest(e.source).encode())
    return "sha256:" + h.hexdigest()


def _file_digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_copy_tar(entries: list[Entry], parents: list[str], out: IO[bytes],
                   owner: Owner | None, mode: int | None) -> None:
    """The COPY layer: PARENTS (folders the destination needs that the image lacks:
    root's, 0755) then ENTRIES, with OWNER/MODE overriding what the sources have."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for p in parents:
            t = tarfile.TarInfo(p)
            t.type, t.mode, t.mtime, t.uname, t.gname = tarfile.DIRTYPE, 0o755, 0, "", ""
            if owner is not None:
                t.uid, t.gid = owner.uid, owner.gid
            tar.addfile(t)
        archives: dict[Path, tarfile.TarFile] = {}
        try:
            for e in entries:
                _add(tar, e, owner, mode, archives)
        finally:
            for a in archives.values():
                a.close()


def _add(tar: tarfile.TarFile, e: Entry, owner: Owner | None, mode: int | None,
         archives: dict[Path, tarfile.TarFile]) -> None:
    if e.archive_member:
        assert e.source is not None
        arch = archives.get(e.source) or archives.setdefault(e.source, tarfile.open(e.source))
        m = arch.getmember(e.archive_member)
        t = tarfile.TarInfo(e.dest)
        t.type, t.mode, t.mtime, t.size = m.type, m.mode, int(m.mtime), m.size if m.isreg() else 0
        t.uid, t.gid = (owner.uid, owner.gid) if owner is not None else (m.uid, m.gid)
        t.uname = t.gname = ""
        if m.issym() or m.islnk():
            t.linkname = m.linkname if m.issym() else _relink(m.linkname, e.dest, e.archive_member)
        if mode is not None and not m.issym():
            t.mode = mode
        src = arch.extractfile(m) if m.isreg() else None
        tar.addfile(t, src)
        return
    t = tarfile.TarInfo(e.dest)
    t.uname = t.gname = ""
    if e.inline is not None:
        t.type, t.mode, t.mtime, t.size = tarfile.REGTYPE, 0o644 if mode is None else mode, 0, len(e.inline)
        if owner is not None:
            t.uid, t.gid = owner.uid, owner.gid
        tar.addfile(t, io.BytesIO(e.inline))
        return
    if e.source is None:
        t.type, t.mode, t.mtime = tarfile.DIRTYPE, 0o755, 0
        if owner is not None:
            t.uid, t.gid = owner.uid, owner.gid
        tar.addfile(t)
        return
    st = os.lstat(e.source)
    t.mtime = int(st.st_mtime)
    t.mode = stat.S_IMODE(st.st_mode)
    t.uid, t.gid = (owner.uid, owner.gid) if owner is not None else (0, 0)
    if stat.S_ISLNK(st.st_mode):
        t.type, t.linkname = tarfile.SYMTYPE, os.readlink(e.source)
        tar.addfile(t)
        return
    if mode is not None:
        t.mode = mode
    if stat.S_ISDIR(st.st_mode):
        t.type = tarfile.DIRTYPE
        tar.addfile(t)
    elif stat.S_ISREG(st.st_mode):
        t.size = st.st_size
        with open(e.source, "rb") as f:
            tar.addfile(t, f)
    # sockets, fifos and devices in a build context are not copied (as BuildKit)


def _relink(linkname: str, dest: str, member: str) -> str:
    """A hard link inside an ADDed archive, re-rooted at the destination."""
    prefix = dest[: len(dest) - len(member.strip("/"))] if dest.endswith(member.strip("/")) else ""
    return prefix + linkname.lstrip("/")


def missing_parents(tree: Path | None, dest_rel: str) -> list[str]:
    """The folders above DEST_REL the image does not have yet (its tree at TREE)."""
    parts = PurePosixPath(dest_rel).parts[:-1]
    out = []
    for i in range(len(parts)):
        rel = "/".join(parts[: i + 1])
        if tree is None or not os.path.lexists(tree / rel):
            out.append(rel)
    return out

