"""The tests' CRI v1 client (tests/k8s/cri, pure): its generated modules are current, the
fields it keeps have upstream's numbers and types (k8s.io/cri-api/pkg/apis/runtime/v1/api.proto)
so they go on the wire as a real CRI server reads them, and the client calls the right rpcs."""
from __future__ import annotations

import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import Message

from tests.k8s.cri import api_pb2 as pb
from tests.k8s.cri import api_pb2_grpc as pb_grpc
from tests.k8s.cri import generate
from tests.k8s.cri.client import CriClient


def test_the_generated_modules_are_current() -> None:
    with tempfile.TemporaryDirectory() as d:
        for made in generate.generate(Path(d)):
            committed = Path(generate.__file__).parent / made.name
            assert made.read_bytes() == committed.read_bytes(), "stale: run python tests/k8s/cri/generate.py"


# (message, field, number, type) as in upstream's api.proto; a sample across every message kind used.
UPSTREAM = [
    ("VersionResponse", "runtime_api_version", 4, F.TYPE_STRING),
    ("RunPodSandboxRequest", "config", 1, F.TYPE_MESSAGE),
    ("RunPodSandboxRequest", "runtime_handler", 2, F.TYPE_STRING),
    ("RunPodSandboxResponse", "pod_sandbox_id", 1, F.TYPE_STRING),
    ("PodSandboxConfig", "metadata", 1, F.TYPE_MESSAGE),
    ("PodSandboxConfig", "hostname", 2, F.TYPE_STRING),
    ("PodSandboxConfig", "log_directory", 3, F.TYPE_STRING),
    ("PodSandboxConfig", "dns_config", 4, F.TYPE_MESSAGE),
    ("PodSandboxConfig", "labels", 6, F.TYPE_MESSAGE),
    ("PodSandboxConfig", "annotations", 7, F.TYPE_MESSAGE),
    ("PodSandboxConfig", "linux", 8, F.TYPE_MESSAGE),
    ("PodSandboxMetadata", "namespace", 3, F.TYPE_STRING),
    ("PodSandboxMetadata", "attempt", 4, F.TYPE_UINT32),
    ("LinuxPodSandboxConfig", "security_context", 2, F.TYPE_MESSAGE),
    ("LinuxSandboxSecurityContext", "privileged", 6, F.TYPE_BOOL),
    ("LinuxSandboxSecurityContext", "run_as_group", 8, F.TYPE_MESSAGE),
    ("NamespaceOption", "ipc", 3, F.TYPE_ENUM),
    ("PodSandboxStatus", "state", 3, F.TYPE_ENUM),
    ("PodSandboxStatus", "created_at", 4, F.TYPE_INT64),
    ("PodSandboxStatus", "runtime_handler", 9, F.TYPE_STRING),
    ("CreateContainerRequest", "sandbox_config", 3, F.TYPE_MESSAGE),
    ("ContainerConfig", "envs", 6, F.TYPE_MESSAGE),
    ("ContainerConfig", "mounts", 7, F.TYPE_MESSAGE),
    ("ContainerConfig", "labels", 9, F.TYPE_MESSAGE),
    ("ContainerConfig", "log_path", 11, F.TYPE_STRING),
    ("ContainerConfig", "tty", 14, F.TYPE_BOOL),
    ("ContainerConfig", "linux", 15, F.TYPE_MESSAGE),
    ("LinuxContainerResources", "memory_limit_in_bytes", 4, F.TYPE_INT64),
    ("LinuxContainerResources", "oom_score_adj", 5, F.TYPE_INT64),
    ("LinuxContainerSecurityContext", "namespace_options", 3, F.TYPE_MESSAGE),
    ("LinuxContainerSecurityContext", "no_new_privs", 11, F.TYPE_BOOL),
    ("LinuxContainerSecurityContext", "run_as_group", 12, F.TYPE_MESSAGE),
    ("StopContainerRequest", "timeout", 2, F.TYPE_INT64),
    ("ContainerStatus", "exit_code", 7, F.TYPE_INT32),
    ("ContainerStatus", "reason", 10, F.TYPE_STRING),
    ("ContainerStatus", "message", 11, F.TYPE_STRING),
    ("ContainerStatus", "log_path", 15, F.TYPE_STRING),
    ("ExecSyncRequest", "timeout", 3, F.TYPE_INT64),
    ("ExecSyncResponse", "stdout", 1, F.TYPE_BYTES),
    ("ExecSyncResponse", "exit_code", 3, F.TYPE_INT32),
    ("Container", "state", 6, F.TYPE_ENUM),
    ("ContainerFilter", "pod_sandbox_id", 3, F.TYPE_STRING),
    ("ContainerStats", "memory", 3, F.TYPE_MESSAGE),
    ("CpuUsage", "usage_core_nano_seconds", 2, F.TYPE_MESSAGE),
    ("MemoryUsage", "working_set_bytes", 2, F.TYPE_MESSAGE),
    ("UInt64Value", "value", 1, F.TYPE_UINT64),
    ("Image", "size", 4, F.TYPE_UINT64),
    ("Image", "uid", 5, F.TYPE_MESSAGE),
]


@pytest.mark.parametrize("message,field,number,kind", UPSTREAM)
def test_fields_have_upstream_numbers_and_types(message: str, field: str, number: int, kind: int) -> None:
    f = getattr(pb, message).DESCRIPTOR.fields_by_name[field]
    assert (f.number, f.type) == (number, kind)


def test_enums_have_upstream_values() -> None:
    assert [(v.name, v.number) for v in pb.NamespaceMode.DESCRIPTOR.values] == \
        [("POD", 0), ("CONTAINER", 1), ("NODE", 2), ("TARGET", 3)]
    assert [(v.name, v.number) for v in pb.PodSandboxState.DESCRIPTOR.values] == \
        [("SANDBOX_READY", 0), ("SANDBOX_NOTREADY", 1)]
    assert [(v.name, v.number) for v in pb.ContainerState.DESCRIPTOR.values] == \
        [("CONTAINER_CREATED", 0), ("CONTAINER_RUNNING", 1), ("CONTAINER_EXITED", 2), ("CONTAINER_UNKNOWN", 3)]


def test_a_run_pod_sandbox_request_on_the_wire() -> None:
    req = pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p")),
                                  runtime_handler="a3sbox")
    # field 1 (config) { field 1 (metadata) { field 1 (name) "p" } }, field 2 (runtime_handler) "a3sbox"
    assert req.SerializeToString() == b"\x0a\x05\x0a\x03\x0a\x01p" + b"\x12\x06a3sbox"
    assert pb.ExecSyncResponse.FromString(b"\x0a\x02hi\x18\x07") == pb.ExecSyncResponse(stdout=b"hi", exit_code=7)


def test_the_services_have_upstream_method_paths() -> None:
    runtime = pb.DESCRIPTOR.services_by_name["RuntimeService"]
    assert runtime.full_name == "runtime.v1.RuntimeService"
    assert sorted(m.name for m in runtime.methods) == sorted([
        "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus",
        "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ContainerStatus",
        "ExecSync", "ListContainers", "ContainerStats"])
    images = pb.DESCRIPTOR.services_by_name["ImageService"]
    assert (images.full_name, sorted(m.name for m in images.methods)) == \
        ("runtime.v1.ImageService", ["ImageStatus", "ListImages"])


class _FakeRuntime(pb_grpc.RuntimeServiceServicer):
    def __init__(self) -> None:
        self.seen: list[Any] = []  # the requests of several types, in the order they came
        self.lock = threading.Lock()

    def _saw(self, req: Message) -> None:
        with self.lock:
            self.seen.append(req)

    def Version(self, req: pb.VersionRequest, ctx: grpc.ServicerContext) -> pb.VersionResponse:
        return pb.VersionResponse(version="0.1.0", runtime_name="fake", runtime_api_version="v1")

    def RunPodSandbox(self, req: pb.RunPodSandboxRequest, ctx: grpc.ServicerContext) -> pb.RunPodSandboxResponse:
        self._saw(req)
        return pb.RunPodSandboxResponse(pod_sandbox_id="pod-1")

    def CreateContainer(self, req: pb.CreateContainerRequest, ctx: grpc.ServicerContext) -> pb.CreateContainerResponse:
        self._saw(req)
        return pb.CreateContainerResponse(container_id="ctr-1")

    def ExecSync(self, req: pb.ExecSyncRequest, ctx: grpc.ServicerContext) -> pb.ExecSyncResponse:
        self._saw(req)
        return pb.ExecSyncResponse(stdout=" ".join(req.cmd).encode(), stderr=b"e", exit_code=3)

    def ContainerStatus(self, req: pb.ContainerStatusRequest, ctx: grpc.ServicerContext) -> pb.ContainerStatusResponse:
        if req.container_id != "ctr-1":
            ctx.abort(grpc.StatusCode.NOT_FOUND, f"no container {req.container_id}")
        return pb.ContainerStatusResponse(status=pb.ContainerStatus(
            id=req.container_id, state=pb.CONTAINER_EXITED, exit_code=3, reason="Completed"))

    def ListContainers(self, req: pb.ListContainersRequest, ctx: grpc.ServicerContext) -> pb.ListContainersResponse:
        self._saw(req)
        return pb.ListContainersResponse(containers=[pb.Container(id="ctr-1", pod_sandbox_id="pod-1")])


def test_the_client_calls_a_server_on_a_unix_socket() -> None:
    with tempfile.TemporaryDirectory() as d:
        sock = Path(d) / "cri.sock"
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        fake = _FakeRuntime()
        pb_grpc.add_RuntimeServiceServicer_to_server(fake, server)
        server.add_insecure_port(f"unix://{sock}")
        server.start()
        try:
            with CriClient(sock, timeout=10) as cri:
                cri.wait_ready()
                assert (cri.version().runtime_name, cri.version().runtime_api_version) == ("fake", "v1")
                sandbox = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="ns"))
                assert cri.run_pod_sandbox(sandbox, handler="a3sbox") == "pod-1"
                config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"),
                                            image=pb.ImageSpec(image="busybox"), command=["sleep", "1"])
                assert cri.create_container("pod-1", config, sandbox) == "ctr-1"
                assert cri.exec_sync("ctr-1", ["echo", "hi"], timeout=5) == (3, b"echo hi", b"e")
                status = cri.container_status("ctr-1")
                assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 3, "Completed")
                with pytest.raises(grpc.RpcError) as err:
                    cri.container_status("nope")
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                assert [c.id for c in cri.list_containers("pod-1", state=pb.CONTAINER_RUNNING)] == ["ctr-1"]
                with pytest.raises(grpc.RpcError) as err:
                    cri.start_container("ctr-1")  # the fake does not implement it
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            server.stop(None).wait()
        run: pb.RunPodSandboxRequest
        create: pb.CreateContainerRequest
        exec_: pb.ExecSyncRequest
        listing: pb.ListContainersRequest
        run, create, exec_, listing = fake.seen
        assert (run.runtime_handler, run.config.metadata.namespace) == ("a3sbox", "ns")
        assert (create.pod_sandbox_id, create.config.image.image, create.sandbox_config.metadata.name) == \
            ("pod-1", "busybox", "p")
        assert (list(exec_.cmd), exec_.timeout) == (["echo", "hi"], 5)
        assert (listing.filter.pod_sandbox_id, listing.filter.state.state) == ("pod-1", pb.CONTAINER_RUNNING)
