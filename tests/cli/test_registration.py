"""Every `box` command comes from one *_cmds module, which owns it (its COMMANDS), and main
names every such module once: a module added but not listed fails here, and two modules
giving a command the same name would silently keep only one."""
from __future__ import annotations

from pathlib import Path

import a3s_box.cli
from a3s_box.cli.main import COMMAND_MODULES, cli


def test_main_lists_every_command_module_once() -> None:
    folder = Path(a3s_box.cli.__file__).parent
    on_disk = sorted(f"a3s_box.cli.{p.stem}" for p in folder.glob("*_cmds.py"))
    listed = [m.__name__ for m in COMMAND_MODULES]  # type: ignore[attr-defined]
    assert sorted(listed) == on_disk and len(set(listed)) == len(listed)


def test_each_command_comes_from_one_module() -> None:
    owned = [c.name or "" for m in COMMAND_MODULES for c in m.COMMANDS]
    assert sorted(owned) == sorted(cli.commands) and len(set(owned)) == len(owned)
