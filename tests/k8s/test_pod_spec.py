"""What the shim takes from an OCI spec for a pod member (pure parts, no VM): which
pod a container belongs to, which host paths it binds, its limits as flags of the
guest's /.a3s/container."""
from __future__ import annotations

from pathlib import Path

from a3s_box.k8s.annotations import pod_of
from a3s_box.k8s.pod import _dir_name, memory_mib, vcpus
from a3s_box.k8s.task import _host_binds, _limits, cgroup_name


def test_a_container_belongs_to_its_sandbox_and_anything_else_to_itself() -> None:
    cri = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb1"}
    assert pod_of(cri, "c1") == "sb1"
    assert pod_of({"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "sb1"},
                  "sb1") == "sb1"
    assert pod_of({}, "k1") == "k1"  # ctr run: a pod of its own
    assert pod_of({"io.kubernetes.cri.container-type": "container"}, "c2") == "c2"


def test_only_existing_host_binds_outside_the_guests_own_trees_are_taken(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text("nameserver 10.0.2.3\n")
    (tmp_path / "vol").mkdir()
    spec = {"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev/shm", "type": "bind", "source": str(tmp_path / "vol"), "options": ["rbind"]},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": str(tmp_path / "resolv.conf"),
         "options": ["rbind", "ro"]},
        {"destination": "/data", "type": "bind", "source": str(tmp_path / "vol"), "options": ["rbind", "rw"]},
        {"destination": "/gone", "type": "bind", "source": str(tmp_path / "missing"), "options": ["rbind"]},
        {"destination": "relative", "type": "bind", "source": str(tmp_path / "vol")},
    ]}
    assert _host_binds(spec) == [(str(tmp_path / "resolv.conf"), "/etc/resolv.conf", True),
                                 (str(tmp_path / "vol"), "/data", False)]


def test_oci_limits_become_cgroup_flags_and_size_the_vm() -> None:
    spec = {"linux": {"resources": {"memory": {"limit": 128 << 20}, "pids": {"limit": 64},
                                    "cpu": {"quota": 150000, "period": 100000}}}}
    assert _limits(spec) == ["-m", str(128 << 20), "-p", "64", "-q", "150000:100000"]
    assert _limits({}) == [] and _limits({"linux": {"resources": {"memory": {"limit": -1}}}}) == []
    assert vcpus(spec) == 2 and vcpus({}) == 1
    assert memory_mib(spec) == 256 and memory_mib({"linux": {"resources": {"memory": {"limit": 1 << 30}}}}) == 1024


def test_names_in_the_guest_never_make_a_path() -> None:
    assert _dir_name("abc-1.2_3") == "abc-1.2_3"
    for bad in ("..", "a/b", "", "x" * 100):
        assert "/" not in _dir_name(bad) and _dir_name(bad) not in ("", ".", "..")
    assert cgroup_name("a/../b").startswith("c-") and "/" not in cgroup_name("a/../b")
