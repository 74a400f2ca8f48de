"""One box's supervisor: `python -m a3s_box.drivers.krun.supervisor RUNDIR`.

Started detached (own session) by the driver, it reads RUNDIR/launch.json and forks
once, while it is still a fresh single-threaded process:

- the child loads libkrun, configures the context and calls krun_start_enter, which
  takes the process over; when the guest stops libkrun calls _exit(code) and no Python
  cleanup runs. It dies with its parent (PR_SET_PDEATHSIG). A configuration error is
  written to RUNDIR/config-error.txt before the child exits.
- the parent waits for it and records why it ended in RUNDIR/exit.json (the guest's
  code, a VMM fault, a signal), removes the vsock socket, and exits with the same code.
  SIGTERM/SIGINT/SIGHUP make it kill the VM first.

Files: vmm.log (libkrun's stderr), console.log (guest console), supervisor.pid.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from a3s_box.drivers.common.supervision import write_supervisor_record
from a3s_box.drivers.krun.spec import KrunSpec, describe_exit
from a3s_box.errors import BoxError

CONFIG_FAILED = 3  # the child's exit code when configuration failed (see config-error.txt)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _redirect(fd: int, path: Path) -> None:
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, fd)
    os.close(out)


def run_vm(rundir: Path, spec: KrunSpec) -> None:
    """The child: configure and enter. Never returns."""
    code = CONFIG_FAILED
    try:
        _die_with_parent()
        _redirect(1, Path(spec.console))  # the implicit console when it cannot be a file
        _redirect(2, rundir / "vmm.log")
        from a3s_box.drivers.krun.isolate import isolate

        for step in isolate():
            print(f"a3s-box supervisor: {step}", file=sys.stderr, flush=True)
        from a3s_box.drivers.krun.configure import Context, configure
        from a3s_box.drivers.krun.library import load

        krun = load()
        krun.init_log(spec.log_level)
        ctx = Context(krun, spec.box_id)
        configure(ctx, spec)
        ctx.call("krun_start_enter", what="start the VM")  # returns only on failure
    except BoxError as e:
        (rundir / "config-error.txt").write_text(str(e))
    except RuntimeError as e:  # isolate.NoEmptyNetwork
        (rundir / "config-error.txt").write_text(str(e))
    except BaseException as e:  # noqa: BLE001 - nothing may escape a forked child
        (rundir / "config-error.txt").write_text(f"supervisor bug: {e!r}")
    finally:
        os._exit(code)


def exit_record(status: int, config_error: str) -> dict[str, object]:
    """exit.json's content for a waitpid status (pure)."""
    code = os.waitstatus_to_exitcode(status)
    if config_error and code == CONFIG_FAILED:
        return {"status": code, "reason": config_error}
    return {"status": code, "reason": describe_exit(status)}


def supervise(rundir: Path, ready_fd: int = -1) -> int:
    spec = KrunSpec.from_json((rundir / "launch.json").read_text())
    (rundir / "config-error.txt").unlink(missing_ok=True)
    child = os.fork()
    if child == 0:
        run_vm(rundir, spec)

    def stop(signo: int, frame: FrameType | None) -> None:
        try:
            os.kill(child, signal.SIGKILL)  # libkrun has no shutdown request on Linux
        except ProcessLookupError:
            pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    write_supervisor_record(rundir)
    tmp = rundir / ".supervisor.pid"
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, rundir / "supervisor.pid")
    if ready_fd >= 0:
        os.write(ready_fd, b"1")  # the starter may exit now: our pid is on disk
        os.close(ready_fd)
    _, status = os.waitpid(child, 0)
    try:
        err = (rundir / "config-error.txt").read_text()
    except OSError:
        err = ""
    record = exit_record(status, err)
    if spec.socket:
        Path(spec.socket).unlink(missing_ok=True)
    tmp = rundir / ".exit.json"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, rundir / "exit.json")
    code = int(str(record["status"]))
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[2:] not in ([], ["--detach"]):
        print("usage: python -m a3s_box.drivers.krun.supervisor RUNDIR [--detach]",
              file=sys.stderr)
        return 2
    if argv[2:] != ["--detach"]:
        return supervise(Path(argv[1]))
    # --detach: the supervisor is orphaned to init (no zombie in a long-lived `box`),
    # and the starter exits only once supervisor.pid is written
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        ok = os.read(r, 1) == b"1"
        os._exit(0 if ok else 1)
    os.close(r)
    return supervise(Path(argv[1]), w)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
