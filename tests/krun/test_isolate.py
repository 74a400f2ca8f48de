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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux namespaces")
def test_the_vm_process_has_an_empty_network_namespace() -> None:
    """libkrun's TSI would open the guest's sockets on the host: in an empty namespace
    there is nothing to reach, and nothing a guest listens on appears on the host."""
    code = ("import os, socket; from a3s_box.drivers.krun.isolate import isolate; isolate(); "
            "print(os.readlink('/proc/self/ns/net')); "
            "print(open('/proc/net/dev').read().count(':'))\n"
            "try:\n socket.create_connection(('127.0.0.1', 22), timeout=1); print('reached')\n"
            "except OSError as e: print('unreachable', e.errno)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0 and "empty network namespace" in r.stderr:
        pytest.skip("this host refuses new network namespaces: the VM would not start (tested)")
    out = r.stdout.splitlines()
    assert out[0] != os.readlink("/proc/self/ns/net")
    assert int(out[1]) == 1  # only lo (down), nothing of the host's
    assert out[2].startswith("unreachable")
