"""Our C programs built with AddressSanitizer and UndefinedBehaviorSanitizer (glibc's gcc:
musl has no sanitizer runtime), for tests that feed them what a hostile side sends: an
out-of-bounds access, a use after free or an overflow fails the test that provoked it
with the sanitizer's report, where the shipped (static, musl) build might only misbehave
later."""
from __future__ import annotations

import subprocess
from pathlib import Path

from a3s_box import cbuild

SANITIZED = "sanitized"
SANITIZER_FLAGS = ("-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                   "-fno-omit-frame-pointer", "-Wall", "-Wextra", "-Werror")


def build_sanitized(sources: Path, folder: Path, program: str) -> Path:
    """FOLDER/sanitized/PROGRAM from the .c files in SOURCES (the folder's name tells a
    test which build a process runs)."""
    binary = folder / SANITIZED / program
    binary.parent.mkdir()
    files = sorted(str(c) for c in sources.glob("*.c"))
    subprocess.run(["gcc", *SANITIZER_FLAGS, "-I", str(cbuild.SHARED_HEADERS), "-o", str(binary), *files],
                   check=True)
    return binary


def sanitizer_env(log_base: Path) -> dict[str, str]:
    """Reports go to LOG_BASE.PID; the first error ends the program (leaks at exit are
    not looked for: our programs leave what the kernel frees)."""
    opts = f"log_path={log_base}:halt_on_error=1:abort_on_error=0:exitcode=97"
    return {"ASAN_OPTIONS": f"{opts}:detect_leaks=0", "UBSAN_OPTIONS": f"{opts}:print_stacktrace=1"}


def sanitizer_reports(log_base: Path, stderr: Path) -> str:
    """What the sanitizers said: in their logs, or (UBSan, at times) on the program's stderr."""
    said = "".join(f.read_text(errors="replace") for f in sorted(log_base.parent.glob(log_base.name + ".*")))
    if stderr.is_file():
        said += "".join(line for line in stderr.read_text(errors="replace").splitlines(keepends=True)
                        if "runtime error:" in line or "Sanitizer" in line)
    return said
