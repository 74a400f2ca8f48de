"""The task service's RPCs that need no VM, through the Dispatcher as the daemon routes
them: its handlers() table, the answers for a task it does not have, Update's check of
its JSON, Shutdown."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from a3s_box.home import Home
from a3s_box.k8s import ttrpc
from a3s_box.k8s.proto import shim_pb2
from a3s_box.k8s.service import INVALID_ARGUMENT, NOT_FOUND, SERVICE, Dispatcher
from a3s_box.k8s.task_service import TaskService

pb: Any = shim_pb2  # generated without stubs


def _service(tmp_path: Path) -> tuple[TaskService, threading.Event]:
    stop = threading.Event()
    return TaskService(stop, home=Home(tmp_path / "home"), run_dir=tmp_path / "run"), stop


def _call(service: TaskService, method: str, request: Any = None) -> Any:
    payload = request.SerializeToString() if request is not None else b""
    return ttrpc.parse_response(Dispatcher(service.handlers()).handle(ttrpc.request(1, SERVICE, method, payload)))


def test_each_rpc_is_a_method_of_the_service_it_was_taken_from(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    table = service.handlers()
    assert sorted(table) == ["CloseIO", "Connect", "Create", "Delete", "Exec", "Kill", "Pids", "ResizePty",
                             "Shutdown", "Start", "State", "Stats", "Update", "Wait"]
    assert all(getattr(h, "__self__", None) is service for h in table.values())


def test_connect_names_the_shim_and_no_task_before_create(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    r = _call(service, "Connect", pb.ConnectRequest(id="c1"))
    reply = pb.ConnectResponse()
    reply.ParseFromString(r.payload)
    assert (r.status.code, reply.shim_pid, reply.task_pid, reply.version) == (0, os.getpid(), 0, "a3s-box")


def test_a_task_the_shim_does_not_have_is_not_found_by_name(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    for method, request in [("Start", pb.TaskRef(id="c9")), ("Wait", pb.TaskRef(id="c9")),
                            ("State", pb.TaskRef(id="c9")), ("Delete", pb.TaskRef(id="c9")),
                            ("Kill", pb.KillRequest(id="c9", signal=9)), ("Pids", pb.PidsRequest(id="c9")),
                            ("Stats", pb.StatsRequest(id="c9")), ("ResizePty", pb.ResizePtyRequest(id="c9"))]:
        r = _call(service, method, request)
        assert (r.status.code, r.status.message) == (NOT_FOUND, "no task c9"), method


def test_a_member_of_a_pod_this_shim_has_no_vm_for_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    bundle = tmp_path / "c2"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"annotations": {
        "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb1"}}))
    r = _call(service, "Create", pb.CreateTaskRequest(id="c2", bundle=str(bundle)))
    assert (r.status.code, r.status.message) == (NOT_FOUND, "container c2: its pod sandbox sb1 has no VM in this shim")
    assert service.tasks == {} and not (tmp_path / "run").exists()


def test_update_refuses_resources_that_are_not_json_before_looking_for_the_task(tmp_path: Path) -> None:
    service, _ = _service(tmp_path)
    request = pb.UpdateTaskRequest(id="c9")
    request.resources.value = b"{not json"
    r = _call(service, "Update", request)
    assert r.status.code == INVALID_ARGUMENT
    assert r.status.message.startswith("task c9: resources are not OCI LinuxResources JSON (")


def test_shutdown_without_tasks_stops_the_daemon(tmp_path: Path) -> None:
    service, stop = _service(tmp_path)
    assert _call(service, "Shutdown").status.code == 0 and stop.is_set()
