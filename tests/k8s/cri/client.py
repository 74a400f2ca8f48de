"""A small CRI v1 client over gRPC on a unix socket (containerd's CRI plugin listens on
containerd's own socket, e.g. /run/containerd/containerd.sock).

    with CriClient(sock) as cri:
        pod = cri.run_pod_sandbox(pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(
            name="p", uid="u1", namespace="default")), handler="a3sbox")
        ...

Failures surface as grpc.RpcError (its .code() and .details() say what the runtime refused)."""
from __future__ import annotations

import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

import grpc

from . import api_pb2 as pb
from . import api_pb2_grpc as pb_grpc

__all__ = ["CriClient", "pb"]


class CriClient:
    def __init__(self, socket_path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        """`timeout` is the deadline of every call, in seconds (exec_sync adds its own)."""
        self.socket_path = os.path.abspath(os.fspath(socket_path))
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{self.socket_path}")
        # The generated stubs are untyped: each method below names the reply type it returns.
        runtime_stub: Callable[[grpc.Channel], Any] = pb_grpc.RuntimeServiceStub
        image_stub: Callable[[grpc.Channel], Any] = pb_grpc.ImageServiceStub
        self.runtime = runtime_stub(self._channel)
        self.images = image_stub(self._channel)

    # -- lifecycle --

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the socket answers (raises grpc.FutureTimeoutError otherwise)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- runtime --

    def version(self) -> pb.VersionResponse:
        resp: pb.VersionResponse = self.runtime.Version(pb.VersionRequest(version="v1"), timeout=self.timeout)
        return resp

    def run_pod_sandbox(self, config: pb.PodSandboxConfig, handler: str = "") -> str:
        """Start a pod sandbox with the named runtime handler ("" is the default); its id."""
        req = pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
        resp: pb.RunPodSandboxResponse = self.runtime.RunPodSandbox(req, timeout=self.timeout)
        return resp.pod_sandbox_id

    def pod_sandbox_status(self, pod_id: str, verbose: bool = False) -> pb.PodSandboxStatusResponse:
        req = pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=verbose)
        resp: pb.PodSandboxStatusResponse = self.runtime.PodSandboxStatus(req, timeout=self.timeout)
        return resp

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=self.timeout)

    def remove_pod_sandbox(self, pod_id: str) -> None:
        self.runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=self.timeout)

    def create_container(self, pod_id: str, config: pb.ContainerConfig,
                         sandbox_config: pb.PodSandboxConfig) -> str:
        """Create a container in the pod (sandbox_config: the one the pod was run with); its id."""
        req = pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config)
        resp: pb.CreateContainerResponse = self.runtime.CreateContainer(req, timeout=self.timeout)
        return resp.container_id

    def start_container(self, container_id: str) -> None:
        self.runtime.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=self.timeout)

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        """Stop it, killing it after `timeout` seconds of grace (0: at once)."""
        req = pb.StopContainerRequest(container_id=container_id, timeout=timeout)
        self.runtime.StopContainer(req, timeout=self.timeout + timeout)

    def remove_container(self, container_id: str) -> None:
        self.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=self.timeout)

    def container_status(self, container_id: str, verbose: bool = False) -> pb.ContainerStatus:
        req = pb.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        resp: pb.ContainerStatusResponse = self.runtime.ContainerStatus(req, timeout=self.timeout)
        return resp.status

    def list_containers(self, pod_id: str = "", state: pb.ContainerState | None = None) -> list[pb.Container]:
        """The containers, of one pod if `pod_id`, in one pb.ContainerState if `state` is given."""
        filt = pb.ContainerFilter(pod_sandbox_id=pod_id)
        if state is not None:
            filt.state.state = state
        req = pb.ListContainersRequest(filter=filt)
        resp: pb.ListContainersResponse = self.runtime.ListContainers(req, timeout=self.timeout)
        return list(resp.containers)

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int = 0) -> tuple[int, bytes, bytes]:
        """Run `cmd` in the container and wait for it; (exit_code, stdout, stderr). The runtime
        stops it after `timeout` seconds (0: never, though the call's deadline still applies)."""
        req = pb.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)
        resp: pb.ExecSyncResponse = self.runtime.ExecSync(req, timeout=self.timeout + timeout)
        return resp.exit_code, resp.stdout, resp.stderr

    def container_stats(self, container_id: str) -> pb.ContainerStats:
        req = pb.ContainerStatsRequest(container_id=container_id)
        resp: pb.ContainerStatsResponse = self.runtime.ContainerStats(req, timeout=self.timeout)
        return resp.stats

    # -- images --

    def list_images(self) -> list[pb.Image]:
        resp: pb.ListImagesResponse = self.images.ListImages(pb.ListImagesRequest(), timeout=self.timeout)
        return list(resp.images)

    def image_status(self, image: str) -> pb.Image | None:
        """The image's record, or None when the runtime does not have it."""
        req = pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
        resp: pb.ImageStatusResponse = self.images.ImageStatus(req, timeout=self.timeout)
        return resp.image if resp.HasField("image") else None
