"""a3s-box: run AI agents inside hardware-isolated microVMs, declared in a Boxfile.

The public Python API (the `box` CLI is built on it):

    import a3s_box
    with a3s_box.Host() as host:                 # the home: $A3S_BOX_HOME or ~/.local/share/a3s-box
        bf = a3s_box.load_boxfile(["Boxfile.yaml"])
        print(host.plan(bf).text())
        with host.locked():
            host.apply(bf)
        with host.leased("coders") as box:        # a warm-pool box, released after
            print(box.run(["echo", "hi"]).stdout)
        box = host.box("coder")                   # any box: run, and files in and out
        box.files.upload("./src", "/workspace")
        print(box.files.read("/workspace/src/main.py"))

Names are imported lazily so that `box --help` does not pay for pydantic and friends.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from a3s_box.version import __version__ as __version__  # re-exported: a3s_box.__version__

_EXPORTS = {
    "Client": "a3s_box.client",  # box serve from elsewhere (remote), sync
    "AsyncClient": "a3s_box.client",
    "Host": "a3s_box.orchestrator.host",
    "ApplyResult": "a3s_box.orchestrator.host",
    "BoxInfo": "a3s_box.orchestrator.host",
    "LeasedBox": "a3s_box.orchestrator.host",
    "BoxHandle": "a3s_box.orchestrator.host",
    "FilesError": "a3s_box.files",
    "Plan": "a3s_box.orchestrator.plan",
    "Action": "a3s_box.orchestrator.plan",
    "Home": "a3s_box.home",
    "Boxfile": "a3s_box.boxfile.model",
    "BoxError": "a3s_box.errors",
    "BoxfileError": "a3s_box.errors",
    "Problem": "a3s_box.errors",
    "ImageError": "a3s_box.errors",
    "RegistryError": "a3s_box.errors",
    "StateError": "a3s_box.errors",
    "DiskFullError": "a3s_box.errors",
    "DriverError": "a3s_box.errors",
    "HostUnsupported": "a3s_box.errors",
    "GuestError": "a3s_box.errors",
}

__all__ = sorted([*_EXPORTS, "load_boxfile", "__version__"])


def load_boxfile(files: Any, environ: Any = None) -> Any:
    """Load and validate Boxfile(s); raises BoxfileError with every problem found."""
    from a3s_box.boxfile import load

    return load(files if isinstance(files, (list, tuple)) else [files], environ)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'a3s_box' has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly (`X as X`: re-exported,
    # as mypy cannot read the computed __all__ above)
    from a3s_box.boxfile.model import Boxfile as Boxfile
    from a3s_box.client import AsyncClient as AsyncClient
    from a3s_box.client import Client as Client
    from a3s_box.errors import BoxError as BoxError
    from a3s_box.errors import BoxfileError as BoxfileError
    from a3s_box.errors import DiskFullError as DiskFullError
    from a3s_box.errors import DriverError as DriverError
    from a3s_box.errors import GuestError as GuestError
    from a3s_box.errors import HostUnsupported as HostUnsupported
    from a3s_box.errors import ImageError as ImageError
    from a3s_box.errors import Problem as Problem
    from a3s_box.errors import RegistryError as RegistryError
    from a3s_box.errors import StateError as StateError
    from a3s_box.files import FilesError as FilesError
    from a3s_box.home import Home as Home
    from a3s_box.orchestrator.host import ApplyResult as ApplyResult
    from a3s_box.orchestrator.host import BoxHandle as BoxHandle
    from a3s_box.orchestrator.host import BoxInfo as BoxInfo
    from a3s_box.orchestrator.host import Host as Host
    from a3s_box.orchestrator.host import LeasedBox as LeasedBox
    from a3s_box.orchestrator.plan import Action as Action
    from a3s_box.orchestrator.plan import Plan as Plan
