"""Pure parts: launch.json, /.krun_config.json, exit names, probe verdicts."""
from __future__ import annotations

import json
import os

import pytest

from a3s_box.drivers.krun.probe import verdict_from
from a3s_box.drivers.krun.spec import KrunSpec, box_spec, describe_exit, krun_config, rlimit_words
from a3s_box.drivers.krun.supervisor import CONFIG_FAILED, exit_record


def test_launch_json_round_trips() -> None:
    spec = box_spec("p.web", 2, 512, "/r", "/run/g.sock", "/run/c.log", debug=True)
    again = KrunSpec.from_json(spec.to_json())
    assert again == spec
    assert again.boot_args == ("a3s.root=none", "a3s.channel=vsock:1024", "a3s.debug=1")


def test_launch_json_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="not an object"):
        KrunSpec.from_json("[1]")


def test_krun_config_runs_our_init_as_pid_1() -> None:
    spec = box_spec("b", 1, 128, "/r", "", "/c")
    cfg = krun_config(spec)
    assert cfg["Cmd"] == ["/init"] and cfg["WorkingDir"] == "/"
    env = cfg["Env"]
    assert isinstance(env, list) and "KRUN_INIT_PID1=1" in env
    json.dumps(cfg)  # what libkrun's init parses


@pytest.mark.parametrize(("status", "text"), [
    (0, "exited 0"),
    (1 << 8, "exited 1"),
    (127 << 8, "exited 127: the guest program was not found in the root"),
    (125 << 8, "exited 125: guest init failed before starting the program (libkrun init)"),
    (148 << 8, "exited 148: VMM fault: bad system call (seccomp)"),
    (150 << 8, "exited 150: VMM fault: SIGSEGV"),
    (9, "VMM killed by SIGKILL"),
])
def test_exit_names(status: int, text: str) -> None:
    assert describe_exit(status) == text


def test_exit_record_prefers_the_configuration_error() -> None:
    assert exit_record(CONFIG_FAILED << 8, "box b: vcpus 0") == {
        "status": CONFIG_FAILED, "reason": "box b: vcpus 0"}
    assert exit_record(9, "") == {"status": -9, "reason": "VMM killed by SIGKILL"}
    assert os.waitstatus_to_exitcode(CONFIG_FAILED << 8) == CONFIG_FAILED


def test_verdicts() -> None:
    kvm = verdict_from({"status": 1, "reason": "exited 1"},
                       "[ERROR krun_vmm::linux::vstate] Received KVM_EXIT_INTERNAL_ERROR signal",
                       5.0)
    assert not kvm.usable
    assert kvm.detail == ("libkrun found, but this host's KVM cannot run a standard guest "
                          "(KVM_EXIT_INTERNAL_ERROR); using qemu/tcg")
    hung = verdict_from(None, "", 5.0)
    assert not hung.usable and "did not stop within 5 s" in hung.detail
    fault = verdict_from({"status": 149, "reason": "exited 149: VMM fault: SIGBUS"}, "", 5.0)
    assert not fault.usable and "SIGBUS" in fault.detail
    ok = verdict_from({"status": 0, "reason": "exited 0"}, "", 5.0, 0.12)
    assert ok.usable and ok.seconds == 0.12 and ok.detail.startswith("libkrun runs guests")


def test_rlimits_use_the_guest_linux_numbers() -> None:
    assert rlimit_words({"nproc": (64, 128), "nofile": (1024, 4096)}) == ("7=1024:4096",
                                                                          "6=64:128")
    assert box_spec("b", 1, 128, "/r", "", "/c").rlimits == ("7=65536:65536",)
    with pytest.raises(ValueError, match="unknown rlimit 'files'"):
        rlimit_words({"files": (1, 1)})
    with pytest.raises(ValueError, match="rlimit nofile: soft 9 must be between 0 and hard 8"):
        rlimit_words({"nofile": (9, 8)})
