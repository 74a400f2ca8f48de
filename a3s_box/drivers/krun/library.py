"""Find and load libkrun with cffi (ABI mode), and turn its -errno returns into errors.

Search order: $A3S_BOX_LIBKRUN (a file path), the system loader (libkrun.so.1 on every
upstream 1.x; libkrun.1.dylib on macOS), then the copy inside an installed
`smolmachines` wheel (a fork: libkrun.so.2, needs libvirglrenderer.so.1 loaded first,
and dlopens libkrunfw.so.5 by soname, so we preload its bundled copy).

Functions arrived release by release and some exist only in builds with a feature
(disks, net), so every symbol is looked up on first use; a missing one raises
`HostUnsupported` naming it. `Krun.call` is the one place a return code is checked.
"""
from __future__ import annotations

import ctypes.util
import errno
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi  # type: ignore[import-untyped]

from a3s_box.errors import DriverError, HostUnsupported

ENV_LIBRARY = "A3S_BOX_LIBKRUN"

# Only the functions we call, with libkrun.h's signatures.
CDEF = """
int32_t krun_set_log_level(uint32_t level);
int32_t krun_init_log(int target_fd, uint32_t level, uint32_t style, uint32_t options);
int32_t krun_create_ctx(void);
int32_t krun_free_ctx(uint32_t ctx_id);
int32_t krun_set_vm_config(uint32_t ctx_id, uint8_t num_vcpus, uint32_t ram_mib);
int32_t krun_set_root(uint32_t ctx_id, const char *root_path);
int32_t krun_add_virtiofs(uint32_t ctx_id, const char *c_tag, const char *c_path);
int32_t krun_set_workdir(uint32_t ctx_id, const char *workdir_path);
int32_t krun_set_exec(uint32_t ctx_id, const char *exec_path, const char *const argv[],
                      const char *const envp[]);
int32_t krun_set_env(uint32_t ctx_id, const char *const envp[]);
int32_t krun_set_rlimits(uint32_t ctx_id, const char *const rlimits[]);
int32_t krun_add_vsock_port2(uint32_t ctx_id, uint32_t port, const char *c_filepath,
                             bool listen);
int32_t krun_add_vsock(uint32_t ctx_id, uint32_t tsi_features);
int32_t krun_disable_implicit_vsock(uint32_t ctx_id);
int32_t krun_set_console_output(uint32_t ctx_id, const char *c_filepath);
int32_t krun_fs_add_overlay_file(uint32_t ctx_id, const char *fs_tag, const char *path,
                                 const uint8_t *data, size_t data_len, uint32_t mode,
                                 bool one_shot);
int32_t krun_get_max_vcpus(void);
int32_t krun_start_enter(uint32_t ctx_id);
"""

ROOT_TAG = "/dev/root"  # upstream's krun_set_root is a virtio-fs with this tag
SYSTEM_NAMES = {"darwin": ("libkrun.1.dylib", "libkrun.dylib")}.get(
    sys.platform, ("libkrun.so.1", "libkrun.so"))
FIRMWARE_NAMES = {"darwin": ("libkrunfw.5.dylib", "libkrunfw.4.dylib")}.get(
    sys.platform, ("libkrunfw.so.5", "libkrunfw.so.4"))


@dataclass(frozen=True)
class LibraryPaths:
    """Where libkrun (and what must be loaded before it) was found."""

    libkrun: str  # a path, or a name for the system loader
    firmware: str  # libkrunfw: a path or a loader name; "" if none found
    preload: tuple[str, ...] = ()  # loaded RTLD_GLOBAL first (the fork's virglrenderer)
    origin: str = "system"  # "env", "system" or "smolmachines"


def _smolmachines_dir() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("smol")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        if (Path(loc) / "libkrun.so").is_file():
            return Path(loc)
    return None


def _system_firmware() -> str:
    for name in FIRMWARE_NAMES:
        try:
            ctypes.CDLL(name)  # loadable by the system loader: libkrun will find it too
            return name
        except OSError:
            continue
    return ""


def locate() -> LibraryPaths:
    """Where libkrun is; raises HostUnsupported saying what was tried."""
    explicit = os.environ.get(ENV_LIBRARY)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise HostUnsupported("libkrun", f"${ENV_LIBRARY}={explicit}: no such file")
        fw = next((str(p) for n in FIRMWARE_NAMES if (p := path.parent / n).is_file()), "")
        virgl = ("libvirglrenderer.so.1",) if path.name == "libkrun.so" and \
            (path.parent / "libkrunfw.so.5").is_file() else ()
        return LibraryPaths(str(path), fw or _system_firmware(), virgl, "env")
    for name in SYSTEM_NAMES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return LibraryPaths(name, _system_firmware(), (), "system")
    smol = _smolmachines_dir()
    if smol is not None:
        bundled = smol / "libkrunfw.so.5"
        return LibraryPaths(str(smol / "libkrun.so"),
                            str(bundled) if bundled.is_file() else "",
                            ("libvirglrenderer.so.1",), "smolmachines")
    raise HostUnsupported("libkrun", "libkrun not found (tried $A3S_BOX_LIBKRUN, "
                          f"{', '.join(SYSTEM_NAMES)}, the smolmachines wheel): install it "
                          "(Fedora: dnf install libkrun; macOS: brew install libkrun; "
                          "elsewhere: pip install smolmachines)")


def describe_errno(code: int) -> str:
    """'EINVAL (Invalid argument)' for -22."""
    n = -code
    return f"{errno.errorcode.get(n, f'errno {n}')} ({os.strerror(n)})"


class Krun:
    """The loaded library. One per process: libkrun's logger may be set up only once."""

    def __init__(self, paths: LibraryPaths) -> None:
        self.paths = paths
        self.ffi = cffi.FFI()
        self.ffi.cdef(CDEF)
        flags = self.ffi.RTLD_NOW | self.ffi.RTLD_GLOBAL
        try:
            for dep in paths.preload:
                self.ffi.dlopen(dep, flags)
            if paths.firmware:
                self.ffi.dlopen(paths.firmware, flags)
            self.lib: Any = self.ffi.dlopen(paths.libkrun, self.ffi.RTLD_NOW)
        except OSError as e:
            raise HostUnsupported("libkrun", f"cannot load {paths.libkrun}: {e}") from e
        self._log_set = False

    def has(self, name: str) -> bool:
        try:
            getattr(self.lib, name)
        except AttributeError:
            return False
        return True

    def fn(self, name: str) -> Any:
        try:
            return getattr(self.lib, name)
        except AttributeError as e:
            raise HostUnsupported("libkrun", f"{self.paths.libkrun} lacks {name} (too old, "
                                  "or built without that feature): upgrade libkrun") from e

    def call(self, name: str, *args: Any, box: str = "", what: str = "") -> int:
        """Call `name`; a negative return becomes DriverError naming the call and errno."""
        rc = int(self.fn(name)(*args))
        if rc < 0:
            err = OSError(-rc, os.strerror(-rc))
            doing = f" ({what})" if what else ""
            raise DriverError(box, f"libkrun {name}{doing}: {describe_errno(rc)}") from err
        return rc

    def init_log(self, level: int) -> None:
        """Once per process (libkrun refuses a second logger); later calls are no-ops."""
        if self._log_set:
            return
        self._log_set = True
        if self.has("krun_set_log_level"):
            self.call("krun_set_log_level", level, what="log level")

    def strings(self, items: list[str] | tuple[str, ...]) -> Any:
        """A NULL-terminated char*[] kept alive by the returned cdata's keepalive list."""
        keep = [self.ffi.new("char[]", s.encode()) for s in items]
        arr = self.ffi.new("char *[]", keep + [self.ffi.NULL])
        return _Owned(arr, keep)


class _Owned:
    """A cdata array together with the buffers it points to (cffi frees them otherwise)."""

    def __init__(self, arr: Any, keep: list[Any]) -> None:
        self.arr = arr
        self.keep = keep


_loaded: Krun | None = None


def load() -> Krun:
    """The process's libkrun, loaded once."""
    global _loaded
    if _loaded is None:
        _loaded = Krun(locate())
    return _loaded
