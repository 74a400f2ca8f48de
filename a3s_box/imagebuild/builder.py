"""Build an image from a Dockerfile: each stage the target needs, step by step, each
step's result an image in the store's blobs keyed in the build cache by its parent
image, the instruction as it runs and (for COPY/ADD) the content it copies.

    RUN            in a microVM booted from the stage's tree (run.py), its change a layer
    COPY / ADD     a layer made on the host from the context or another stage's tree
    WORKDIR        the folder made when the image lacks it
    ENV LABEL USER CMD ENTRYPOINT EXPOSE SHELL HEALTHCHECK STOPSIGNAL ARG
                   the image config only

A stage's tree (its root file system so far, on the host) exists only when a step
needs it, and follows the stage's layers as they are made or found in the cache.
`preview` walks the same steps without running any: how many are cached, and the
image digest when all are (what `box plan` shows)."""
from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a3s_box.imagebuild import context as ctx
from a3s_box.imagebuild.cache import BuildCache, step_key
from a3s_box.imagebuild.diff import compress, write_tar
from a3s_box.imagebuild.guest_tree import GuestTreeError
from a3s_box.imagebuild.dockerfile import Dockerfile, Heredoc, Instruction, Stage, parse
from a3s_box.imagebuild.expand import expand
from a3s_box.imagebuild.ignore import IgnoreRules
from a3s_box.imagebuild.oci import ImageState
from a3s_box.disks import space
from a3s_box.drivers.base import BoxNetwork
from a3s_box.errors import BuildError, ImageError
from a3s_box.home import Home
from a3s_box.image.records import ImageRecord
from a3s_box.image.store import ImageStore
from a3s_box.image.unpack import RootWriter

DEFAULT_SHELL = ("/bin/sh", "-c")
CONFIG_ONLY = frozenset({"ENV", "LABEL", "USER", "CMD", "ENTRYPOINT", "EXPOSE", "SHELL", "HEALTHCHECK",
                         "STOPSIGNAL"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


@dataclass(frozen=True)
class BuildRequest:
    name: str  # the image's name in the store
    context: Path
    dockerfile: Path  # absolute
    args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    network: BoxNetwork | None = None  # what RUN steps reach (None: nothing)
    no_cache: bool = False


@dataclass(frozen=True)
class StepEvent:
    stage: str  # its name or index
    number: int  # 1-based among the steps the build runs
    total: int
    text: str  # the instruction as written
    cached: bool


@dataclass(frozen=True)
class BuildResult:
    record: ImageRecord | None  # None for a preview
    total: int
    cached: int
    key: str | None  # the last step's cache key (None: not known without building)


Events = Callable[[StepEvent], None]
Output = Callable[[bytes], None]


@dataclass
class _Stage:
    spec: Stage
    label: str
    state: ImageState
    args: dict[str, str]
    shell: tuple[str, ...] = DEFAULT_SHELL
    tree: Path | None = None
    applied: int = 0  # layers of `state` in `tree`
    seed: Callable[[Path], int] | None = None  # fills an empty tree; returns its layer count
    cmd_set: bool = False
    # False in a preview once a step of this stage (or of one it takes from) missed the
    # cache: its state from there is unknown without building
    known: bool = True


def _built_stage(built: dict[int, "_Stage"], ref: str, by_index: bool) -> "_Stage | None":
    """The stage REF names (`AS` name; or its number where BY_INDEX, as COPY --from takes)."""
    return next((s for s in built.values() if (s.spec.name and s.spec.name == ref.lower())
                 or (by_index and str(s.spec.index) == ref)), None)


def load_dockerfile(req: BuildRequest) -> Dockerfile:
    try:
        text = req.dockerfile.read_text()
    except OSError as e:
        raise BuildError(req.name, str(req.dockerfile), f"cannot read the Dockerfile: {e.strerror or e}") from e
    return parse(text, str(req.dockerfile))


def needed_stages(df: Dockerfile, target: str | None, where: str, image: str) -> list[Stage]:
    """The target stage (default: the last) and every stage it takes from, in order."""
    if target is not None:
        last = df.stage(target)
        if last is None:
            names = ", ".join(s.name or str(s.index) for s in df.stages)
            raise BuildError(image, where, f"target {target!r} is not a stage of {df.file} (stages: {names})")
    else:
        last = df.stages[-1]
    want = {last.index}
    for st in reversed(df.stages[: last.index + 1]):
        if st.index not in want:
            continue
        refs = [st.base] + [i.flag("from") or "" for i in st.instructions if i.kind in ("COPY", "ADD")]
        for ref in refs:
            dep = df.stage(ref.lower()) if ref else None
            if dep is not None and dep.index < st.index:
                want.add(dep.index)
    return [s for s in df.stages if s.index in want]


class Builder:
    def __init__(self, home: Home, store: ImageStore, events: Events = lambda e: None,
                 output: Output = lambda b: None) -> None:
        self.home, self.store, self.events, self.output = home, store, events, output
        self.cache = BuildCache(store)
        self.work: Path | None = None

    # --- entry points -----------------------------------------------------------------
    def build(self, req: BuildRequest) -> BuildResult:
        """A full home (a layer, its gzip, a stage's tree, a RUN's disk) is a DiskFullError
        naming the image, said once the build's work folder is gone."""
        with space.full_disk_is_error(f"image {req.name}", self.home.root):
            return self._walk(req, execute=True)

    def preview(self, req: BuildRequest) -> BuildResult:
        return self._walk(req, execute=False)

    def _walk(self, req: BuildRequest, execute: bool) -> BuildResult:
        df = load_dockerfile(req)
        stages = needed_stages(df, req.target, df.file, req.name)
        total = sum(1 for s in stages for i in s.instructions if i.kind != "ARG")
        rules = IgnoreRules.load(req.context)
        global_args = _declare({}, df.global_args, req.args)
        built: dict[int, _Stage] = {}
        number = cached = 0
        key: str | None = None
        build_root = self.home.root / "build"
        build_root.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="build-", dir=build_root)) if execute else None
        try:
            with self.store.holding():  # nothing this build writes is swept before it is pinned
                for spec in stages:
                    st = self._from(spec, built, global_args, req, execute)
                    built[spec.index] = st
                    for ins in spec.instructions:
                        if ins.kind == "ARG":
                            st.args = _declare(st.args, (ins,), req.args, global_args)
                            continue
                        number += 1
                        source = ins.flag("from") if ins.kind in ("COPY", "ADD") else None
                        dep = _built_stage(built, source, by_index=True) if source else None
                        if not st.known or (dep is not None and not dep.known):
                            st.known = False  # a preview: what the cache has past here is unknown
                            continue
                        key = self._key(st, ins, req, rules, built)
                        hit = None if req.no_cache else self.cache.get(key)
                        if hit is not None:
                            st.state = ImageState.load(self.store.blobs, hit)
                            self._after_config(st, ins)
                            cached += 1
                            self.events(StepEvent(st.label, number, total, ins.source, True))
                            continue
                        if not execute:
                            st.known = False  # later stages that do not take from this one go on
                            continue
                        self.events(StepEvent(st.label, number, total, ins.source, False))
                        self._step(st, ins, req, rules, built)
                        st.state = st.state.write(self.store.blobs)
                        self.cache.put(key, st.state)
                final = built[stages[-1].index]
                if not execute:
                    complete = all(st.known for st in built.values())
                    return BuildResult(None, total, cached, key if complete else None)
                record = self.store.register(req.name, final.state.digest, source=str(req.context),
                                             source_digest=key or final.state.digest)
                return BuildResult(record, total, cached, key)
        finally:
            if self.work is not None:
                for st in built.values():
                    if st.tree is not None:
                        _clear_tree(st.tree)
                shutil.rmtree(self.work, ignore_errors=True)
                self.work = None

    # --- FROM ---------------------------------------------------------------------------
    def _from(self, spec: Stage, built: dict[int, _Stage], global_args: dict[str, str],
              req: BuildRequest, execute: bool) -> _Stage:
        base = _expand(spec.base, global_args, spec.from_, req.name)
        label = spec.name or str(spec.index)
        if spec.platform:
            from a3s_box.image.manifest import host_platform

            want = "/".join(host_platform())
            if _expand(spec.platform, global_args, spec.from_, req.name) != want:
                raise BuildError(req.name, spec.from_.where, f"--platform={spec.platform}: this host builds "
                                 f"{want} only (every RUN runs in a VM of the host's architecture)")
        dep = _built_stage(built, base, by_index=False)
        if dep is not None:
            st = _Stage(spec, label, dep.state, {}, dep.shell, known=dep.known)
            st.seed = lambda tree, dep=dep: self._copy_tree(dep, tree)
            return st
        if base.lower() == "scratch":
            return _Stage(spec, label, ImageState.scratch().write(self.store.blobs), {}, seed=lambda tree: 0)
        record: ImageRecord | None
        if execute:
            self.events(StepEvent(label, 0, 0, spec.from_.source, False))
            try:
                record = self.store.ensure(base)
            except ImageError as e:
                raise BuildError(req.name, spec.from_.where, str(e)) from e
        else:
            record = self.store.get(base)
            if record is None:  # not pulled yet: a preview knows nothing of this stage
                return _Stage(spec, label, ImageState.scratch().write(self.store.blobs), {}, known=False)
        state = ImageState.load(self.store.blobs, record.digest)
        st = _Stage(spec, label, state, {})
        st.seed = lambda tree, record=record: self._seed_from_image(record, tree)
        return st

    def _seed_from_image(self, record: ImageRecord, tree: Path) -> int:
        _copy(self.store.unpacked_dir(record), tree)
        return len(record.layers)

    def _copy_tree(self, dep: _Stage, tree: Path) -> int:
        src = self._tree(dep)
        _copy(src, tree)
        return dep.applied

    # --- the stage's tree -----------------------------------------------------------------
    def _tree(self, st: _Stage) -> Path:
        """ST's root so far, on the host: made on first use, then kept in step with its layers."""
        assert self.work is not None
        if st.tree is None:
            tree = self.work / f"stage-{st.spec.index}"
            tree.mkdir()
            assert st.seed is not None
            st.applied = st.seed(tree)
            st.tree = tree
        layers = st.state.layers
        if st.applied < len(layers):
            diff_ids = st.state.diff_ids
            with RootWriter(str(st.tree), st.label) as w:
                for i in range(st.applied, len(layers)):
                    with self.store.blobs.open(layers[i]["digest"]) as blob:
                        w.apply(blob, "gz", diff_ids[i] if i < len(diff_ids) else None,
                                what=f"layer {i + 1}")
            st.applied = len(layers)
        return st.tree

    # --- cache keys -----------------------------------------------------------------------
    def _key(self, st: _Stage, ins: Instruction, req: BuildRequest, rules: IgnoreRules,
             built: dict[int, _Stage]) -> str:
        extra: Any = None
        text = " ".join([ins.kind, *[f"--{k}={v}" for k, v in ins.flags], ins.text]) + \
            "".join(f"\n{h.written}" for h in ins.heredocs)
        if ins.kind == "RUN":
            extra = {"args": dict(sorted(st.args.items())), "shell": list(st.shell)}
        elif ins.kind in ("COPY", "ADD") and ins.flag("from"):
            # another stage's or image's tree: its digest says all of its content
            _root, source_digest = self._from_root(ins.flag("from") or "", built, ins, req, tree=False)
            extra = {"from": source_digest, "vars": dict(sorted(self._vars(st).items()))}
        elif ins.kind in ("COPY", "ADD"):
            entries, _dest = self._copy_plan(st, ins, req, rules, built, tree_needed=False)
            extra = {"content": ctx.content_hash(entries), "vars": dict(sorted(self._vars(st).items()))}
        elif ins.kind != "RUN":
            extra = {"vars": dict(sorted(self._vars(st).items()))}  # what expansion may have used
        return step_key(st.state.digest, text, extra)

    def _vars(self, st: _Stage) -> dict[str, str]:
        """What $VAR means in an instruction: the stage's ARGs, then its ENV over them."""
        return {**st.args, **st.state.env()}

    # --- steps ----------------------------------------------------------------------------
    def _step(self, st: _Stage, ins: Instruction, req: BuildRequest, rules: IgnoreRules,
              built: dict[int, _Stage]) -> None:
        if ins.kind in CONFIG_ONLY:
            st.state = self._config_step(st, ins, req)
            self._after_config(st, ins)
        elif ins.kind == "WORKDIR":
            self._workdir(st, ins, req)
        elif ins.kind == "RUN":
            self._run(st, ins, req)
        elif ins.kind in ("COPY", "ADD"):
            self._copy(st, ins, req, rules, built)
        else:  # the parser refuses what is not supported; this is a guard
            raise BuildError(req.name, ins.where, f"{ins.kind} is not supported")

    def _after_config(self, st: _Stage, ins: Instruction) -> None:
        """What a step leaves in the stage beyond the image (also when cached)."""
        if ins.kind == "SHELL":
            st.shell = tuple(ins.words)
        elif ins.kind == "CMD":
            st.cmd_set = True

    def _config_step(self, st: _Stage, ins: Instruction, req: BuildRequest) -> ImageState:
        c = st.state.config
        v = self._vars(st)
        created_by = ins.source
        if ins.kind == "ENV":
            env = st.state.env()
            for k, val in ins.pairs:
                env[k] = _expand(val or "", {**v, **env}, ins, req.name)
            return st.state.changed(created_by, Env=[f"{k}={x}" for k, x in env.items()])
        if ins.kind == "LABEL":
            labels = dict(c.get("Labels") or {})
            for k, val in ins.pairs:
                labels[_expand(k, v, ins, req.name)] = _expand(val or "", v, ins, req.name)
            return st.state.changed(created_by, Labels=labels)
        if ins.kind == "USER":
            return st.state.changed(created_by, User=_expand(ins.text.strip(), v, ins, req.name))
        if ins.kind in ("CMD", "ENTRYPOINT"):
            argv = list(ins.words) if ins.exec_form else [*st.shell, ins.text]
            if ins.kind == "CMD":
                return st.state.changed(created_by, Cmd=argv)
            # a new ENTRYPOINT drops the Cmd the base image had (Docker's rule)
            return st.state.changed(created_by, Entrypoint=argv, **({} if st.cmd_set else {"Cmd": None}))
        if ins.kind == "EXPOSE":
            ports = dict(c.get("ExposedPorts") or {})
            for w in ins.words:
                p = _expand(w, v, ins, req.name)
                ports[p if "/" in p else f"{p}/tcp"] = {}
            return st.state.changed(created_by, ExposedPorts=ports)
        if ins.kind == "SHELL":
            if not ins.exec_form or not ins.words:
                raise BuildError(req.name, ins.where, 'SHELL takes a JSON array: SHELL ["/bin/bash", "-c"]')
            return st.state.changed(created_by)
        if ins.kind == "STOPSIGNAL":
            return st.state.changed(created_by, StopSignal=_expand(ins.text.strip(), v, ins, req.name))
        assert ins.kind == "HEALTHCHECK"
        if ins.words == ("NONE",) and not ins.exec_form:
            return st.state.changed(created_by, Healthcheck={"Test": ["NONE"]})
        test = ["CMD", *ins.words] if ins.exec_form else ["CMD-SHELL", ins.text]
        hc: dict[str, Any] = {"Test": test}
        for flag, field_name in (("interval", "Interval"), ("timeout", "Timeout"),
                                 ("start-period", "StartPeriod")):
            if ins.flag(flag):
                hc[field_name] = _duration_ns(ins.flag(flag) or "", ins, req.name)
        if ins.flag("retries"):
            try:
                hc["Retries"] = int(ins.flag("retries") or "")
            except ValueError as e:
                raise BuildError(req.name, ins.where, f"--retries={ins.flag('retries')}: not a number") from e
        return st.state.changed(created_by, Healthcheck=hc)

    def _workdir(self, st: _Stage, ins: Instruction, req: BuildRequest) -> None:
        path = _expand(ins.text.strip(), self._vars(st), ins, req.name)
        if not path.startswith("/"):
            path = os.path.join(st.state.config.get("WorkingDir") or "/", path)
        path = os.path.normpath(path)
        rel = path.strip("/")
        missing = ctx.missing_parents(self._tree(st), rel + "/x") if rel else []
        if not missing:
            st.state = st.state.changed(ins.source, WorkingDir=path)
            return
        layer_tar = self._tmp("layer.tar")
        with open(layer_tar, "wb") as f:
            ctx.write_copy_tar([], missing, f, None, None)
        self._commit_layer(st, layer_tar, ins.source, WorkingDir=path)

    def _run(self, st: _Stage, ins: Instruction, req: BuildRequest) -> None:
        from a3s_box.imagebuild.run import RunSpec, run_step

        tree = self._tree(st)
        argv, script = run_command(st.shell, ins)
        env = {**st.args, **st.state.env()}  # ARGs are the step's environment, ENV wins
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        user = _resolve_user(tree, st.state.config.get("User") or "", ins, req.name)
        spec = RunSpec(argv=argv, env=tuple(f"{k}={v}" for k, v in env.items()),
                       workdir=st.state.config.get("WorkingDir") or "/", user=user, network=req.network,
                       vcpus=max(1, min(4, os.cpu_count() or 1)), script=script)
        result = run_step(self.home, tree, spec, req.name, ins.where, self.output, self.output)
        try:
            layer_tar = self._tmp("layer.tar")
            with open(layer_tar, "wb") as f:
                write_tar(result.changes, result.tree, f)
        except GuestTreeError as e:
            raise BuildError(req.name, ins.where, f"reading the step's file system: {e}") from e
        finally:
            result.close()
        self._commit_layer(st, layer_tar, ins.source)

    def _copy_plan(self, st: _Stage, ins: Instruction, req: BuildRequest, rules: IgnoreRules,
                   built: dict[int, _Stage], tree_needed: bool) -> tuple[list[ctx.Entry], str]:
        """The layer's entries and the destination."""
        v = self._vars(st)
        words = [_expand(w, v, ins, req.name) for w in ins.words]
        *sources, dest = words
        if not dest.startswith("/"):
            dest = os.path.join(st.state.config.get("WorkingDir") or "/", dest) + ("/" if dest.endswith("/") else "")
        pending, inline, files = list(ins.heredocs), list[Heredoc](), list[str]()
        for w in sources:  # the parser wrote each heredoc source as <<NAME, in order
            if pending and w == f"<<{pending[0].name}":
                inline.append(pending.pop(0))
            else:
                files.append(w)
        src_ref = ins.flag("from")
        root = req.context
        source_rules: IgnoreRules | None = rules
        if src_ref:
            root, _digest = self._from_root(src_ref, built, ins, req)
            source_rules = None
        try:
            paths = ctx.resolve_sources(root, files, source_rules)
        except ctx.SourceError as e:
            raise BuildError(req.name, ins.where, f"{ins.kind} {e}") from e
        tree = self._tree(st) if tree_needed else None
        dest_rel = dest.strip("/")
        dest_is_dir = tree is not None and dest_rel != "" and (tree / dest_rel).is_dir() \
            and not (tree / dest_rel).is_symlink()
        into_dir = dest_is_dir or dest_rel == "" or dest.endswith("/") or len(paths) + len(inline) > 1
        entries = ctx.plan_entries(root, paths, dest, into_dir, source_rules, extract=ins.kind == "ADD")
        for h in inline:  # an unquoted heredoc's $VARs are expanded, as BuildKit does
            content = h.content if h.quoted else _expand(h.content, v, ins, req.name)
            target = f"{dest_rel}/{h.name}".lstrip("/") if into_dir else dest_rel
            entries.append(ctx.Entry(target, None, inline=content.encode()))
        return entries, dest

    def _from_root(self, ref: str, built: dict[int, _Stage], ins: Instruction,
                   req: BuildRequest, tree: bool = True) -> tuple[Path, str]:
        """The tree COPY --from=REF reads (TREE: made now) and the digest standing for it."""
        dep = _built_stage(built, ref, by_index=True)
        if dep is not None:
            if self.work is None or not tree:
                return req.context, dep.state.digest
            return self._tree(dep), dep.state.digest
        record = self.store.get(ref) if self.work is None else self._ensure(ref, ins, req)
        if record is None:
            return req.context, ""
        return (self.store.unpacked_dir(record) if tree else req.context), record.digest

    def _ensure(self, ref: str, ins: Instruction, req: BuildRequest) -> ImageRecord:
        try:
            return self.store.ensure(ref)
        except ImageError as e:
            raise BuildError(req.name, ins.where, f"--from={ref}: {e}") from e

    def _copy(self, st: _Stage, ins: Instruction, req: BuildRequest, rules: IgnoreRules,
              built: dict[int, _Stage]) -> None:
        entries, dest = self._copy_plan(st, ins, req, rules, built, tree_needed=True)
        tree = self._tree(st)
        owner = None
        if ins.flag("chown"):
            uid_gid = _resolve_user(tree, ins.flag("chown") or "", ins, req.name)
            owner = ctx.Owner(*uid_gid) if uid_gid else ctx.Owner(0, 0)
        mode = None
        if ins.flag("chmod"):
            try:
                mode = int(ins.flag("chmod") or "", 8)
            except ValueError as e:
                raise BuildError(req.name, ins.where, f"--chmod={ins.flag('chmod')}: not an octal mode") from e
        # a folder made for the destination that the image has already stays as it is
        entries = [e for e in entries if not (e.source is None and e.inline is None and (tree / e.dest).is_dir()
                                              and not (tree / e.dest).is_symlink())]
        first = entries[0].dest if entries else dest.strip("/")
        parents = ctx.missing_parents(tree, first) if first else []
        layer_tar = self._tmp("layer.tar")
        with open(layer_tar, "wb") as f:
            ctx.write_copy_tar(entries, parents, f, owner, mode)
        self._commit_layer(st, layer_tar, ins.source)

    def _commit_layer(self, st: _Stage, layer_tar: Path, created_by: str, **config: Any) -> None:
        gz = compress(layer_tar, layer_tar.with_suffix(".tar.gz"))
        with open(gz.path, "rb") as f:
            digest = self.store.blobs.put_file(f, gz.digest)
        assert digest == gz.digest
        layer_tar.unlink(missing_ok=True)
        gz.path.unlink(missing_ok=True)
        st.state = st.state.with_layer(gz, created_by, **config)

    def _tmp(self, name: str) -> Path:
        assert self.work is not None
        fd, path = tempfile.mkstemp(prefix=name + ".", dir=self.work)
        os.close(fd)
        return Path(path)


# --- helpers ------------------------------------------------------------------------------
def run_command(shell: tuple[str, ...], ins: Instruction) -> tuple[tuple[str, ...], bytes | None]:
    """A RUN's argv, or its script when it is one heredoc starting with #! (then executed
    as a file, as BuildKit does). Other heredocs go to the shell after the command line,
    which is how a shell reads them; one that is the whole command is the shell's script."""
    if ins.exec_form:
        return tuple(ins.words), None
    if not ins.heredocs:
        return (*shell, ins.text), None
    whole = _HEREDOC_ONLY.fullmatch(ins.text.strip())
    if whole is not None and len(ins.heredocs) == 1:
        script = ins.heredocs[0].content
        return ((), script.encode()) if script.startswith("#!") else ((*shell, script), None)
    return (*shell, ins.text + "\n" + "".join(h.written for h in ins.heredocs)), None


_HEREDOC_ONLY = re.compile(r"""<<-?[ \t]*['"]?([A-Za-z_][A-Za-z0-9_]*)['"]?""")


def _declare(current: dict[str, str], args: tuple[Instruction, ...], given: dict[str, str],
             outer: dict[str, str] | None = None) -> dict[str, str]:
    """ARG NAME[=default]: the build's --build-arg value, else the default (else the value
    a global ARG of that name had)."""
    out = dict(current)
    for ins in args:
        for name, default in ins.pairs:
            if name in given:
                out[name] = given[name]
            elif default is not None:
                out[name] = expand(default, out)
            elif outer is not None and name in outer:
                out[name] = outer[name]
    return out


def _expand(word: str, env: dict[str, str], ins: Instruction, image: str) -> str:
    try:
        return expand(word, env)
    except ValueError as e:
        raise BuildError(image, ins.where, f"{ins.kind}: {e}") from e


def _duration_ns(text: str, ins: Instruction, image: str) -> int:
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise BuildError(image, ins.where, f"{text!r} is not a duration (like 30s, 1m30s)")
    return int(sum(float(n) * _UNIT_NS[u] for n, u in parts))


def _resolve_user(tree: Path, user: str, ins: Instruction, image: str) -> tuple[int, int] | None:
    """USER / --chown NAME[:GROUP] as numbers, from the image's /etc/passwd and /etc/group."""
    if not user:
        return None
    name, _, group = user.partition(":")
    uid = gid = None
    if name.isdigit():
        uid = int(name)
    for line in _lines(tree / "etc/passwd"):
        f = line.split(":")
        if len(f) >= 4 and (f[0] == name or (uid is not None and f[2] == name)):
            uid, gid = int(f[2]), int(f[3])
            break
    if uid is None:
        raise BuildError(image, ins.where, f"user {name!r} is not in the image's /etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gid = next((int(f[2]) for f in (x.split(":") for x in _lines(tree / "etc/group"))
                        if len(f) >= 3 and f[0] == group), None)
            if gid is None:
                raise BuildError(image, ins.where, f"group {group!r} is not in the image's /etc/group")
    return uid, gid if gid is not None else uid


def _lines(p: Path) -> list[str]:
    try:
        if p.is_symlink():
            return []  # the image's own: not followed on the host
        return p.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _copy(src: Path, dest: Path) -> None:
    """A root tree copied with owners, modes, times, links and hard links (cp -a)."""
    r = subprocess.run(["cp", "-a", f"{src}/.", str(dest)], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        if os.strerror(errno.ENOSPC) in r.stderr:  # as cp said it: the build names the disk
            raise OSError(errno.ENOSPC, "cannot copy the stage's tree", str(dest))
        raise ImageError(str(src), f"cannot copy the stage's tree: {r.stderr.strip()[-300:]}")


def _clear_tree(tree: Path) -> None:
    # read-only folders an image may hold must not stop the clean-up
    subprocess.run(["chmod", "-R", "u+rwx", str(tree)], capture_output=True, timeout=600)
    shutil.rmtree(tree, ignore_errors=True)
