"""The VM process's host isolation, checked in a real child process."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")
def test_the_vm_process_gets_its_own_uts_and_ipc_and_no_new_privs() -> None:
    code = ("import os; from a3s_box.drivers.krun.isolate import isolate; s = isolate(); "
            "print(os.readlink('/proc/self/ns/uts'), os.readlink('/proc/self/ns/ipc')); "
            "print([ln for ln in open('/proc/self/status')"
            " if ln.startswith('NoNewPrivs')][0].strip());"
            "print(s)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    uts, ipc = out[0].split()
    steps = out[2]
    assert out[1].split() == ["NoNewPrivs:", "1"]
    if "uts namespace: new" in steps:
        assert uts != os.readlink("/proc/self/ns/uts")
        assert ipc != os.readlink("/proc/self/ns/ipc")
    else:  # an unprivileged host: the step says why it was skipped
        assert "uts namespace: skipped (" in steps
        assert uts == os.readlink("/proc/self/ns/uts")
