"""The Boxfile's `build:` images, as the orchestrator sees them: a BuildRequest per
image, what the build cache already has (for the plan), and the build itself (for apply
and `box build`). The builder (a3s_box.imagebuild) knows nothing of Boxfiles."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from a3s_box.boxfile.model import Boxfile, ImageDef
from a3s_box.drivers.base import BoxNetwork
from a3s_box.home import Home
from a3s_box.image.store import ImageStore
from a3s_box.orchestrator.desired import BuildPreview, built_image_name

if TYPE_CHECKING:
    from a3s_box.imagebuild.builder import BuildRequest, BuildResult, Events, Output


def build_request(project: str, name: str, img: ImageDef, no_cache: bool = False) -> "BuildRequest":
    from a3s_box.imagebuild.builder import BuildRequest

    b = img.build
    assert b is not None
    network = None
    if b.network.enabled:
        network = BoxNetwork(b.network.policy())
    context = Path(b.context)
    return BuildRequest(name=built_image_name(project, name), context=context,
                        dockerfile=(context / b.dockerfile).absolute(), args=dict(b.args), target=b.target,
                        network=network, no_cache=no_cache)


def shown(context: Path) -> str:
    """The context as a user wrote it, near enough: relative to here when below it."""
    try:
        rel = context.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return str(context)
    return "./" + rel.as_posix() if str(rel) != "." else "."


def previews(home: Home, store: ImageStore, boxfile: Boxfile, project: str) -> dict[str, BuildPreview]:
    """For each build image: its steps, how many the cache has, and its digest when the
    store holds exactly what the Boxfile's build makes (nothing runs)."""
    from a3s_box.imagebuild.builder import Builder

    out: dict[str, BuildPreview] = {}
    for name, img in sorted(boxfile.images.items()):
        if img.build is None:
            continue
        req = build_request(project, name, img)
        result = Builder(home, store).preview(req)
        digest = None
        if result.key is not None:
            record = store.get(req.name)
            if record is not None and record.source_digest == result.key:
                digest = record.digest
        out[name] = BuildPreview(shown(req.context), result.total, result.cached, digest)
    return out


def run_build(home: Home, store: ImageStore, project: str, name: str, img: ImageDef,
              events: "Events", output: "Output", no_cache: bool = False) -> "BuildResult":
    from a3s_box.imagebuild.builder import Builder

    result = Builder(home, store, events, output).build(build_request(project, name, img, no_cache))
    assert result.record is not None
    return result


def wanted_builds(boxfile: Boxfile, names: list[str]) -> list[str]:
    """The build images NAMES picks (all of them when empty)."""
    builds = [n for n, i in sorted(boxfile.images.items()) if i.build is not None]
    return [n for n in builds if not names or n in names]
