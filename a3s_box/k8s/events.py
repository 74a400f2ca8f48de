"""Events back to containerd (what its CRI plugin tracks tasks by), through the binary
containerd names with -publish-binary: `BINARY --address ADDR publish --topic T
--namespace NS`, a protobuf Any on its stdin."""
from __future__ import annotations

import queue
import subprocess
import sys
import threading
from typing import Any


def timestamp(at: float) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromNanoseconds(int(at * 1e9))
    return stamp


class Publisher:
    """Publishes in order from a thread of its own, as containerd's shims do: a request
    (Create, Start) never waits on containerd's event service to answer it."""

    def __init__(self, binary: str, address: str, namespace: str) -> None:
        self.binary, self.address, self.namespace = binary, address, namespace
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._drain, name="publisher", daemon=True)
        self._worker.start()

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            self._publish(*item)

    def flush(self, timeout: float = 30.0) -> None:
        """Send what is queued, then stop (the daemon is about to exit)."""
        self._queue.put(None)
        self._worker.join(timeout)

    def exit(self, container_id: str, process_id: str, pid: int, status: int, at: float) -> None:
        from a3s_box.k8s.proto import shim_pb2

        self.send("/tasks/exit", "TaskExit", shim_pb2.TaskExit(  # type: ignore[attr-defined]
            container_id=container_id, id=process_id, pid=pid, exit_status=status, exited_at=timestamp(at)))

    def send(self, topic: str, kind: str, event: Any) -> None:
        """Publish EVENT (a containerd.events.KIND) on TOPIC."""
        from google.protobuf.any_pb2 import Any as AnyMsg

        wrapped = AnyMsg(type_url=f"containerd.events.{kind}", value=event.SerializeToString())
        self._queue.put((topic, wrapped.SerializeToString()))

    def _publish(self, topic: str, data: bytes) -> None:
        if not self.binary or not self.address:
            return
        try:
            r = subprocess.run([self.binary, "--address", self.address, "publish", "--topic", topic,
                                "--namespace", self.namespace], input=data, capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            print(f"a3s-box shim: publish {topic}: {e}", file=sys.stderr)
            return
        if r.returncode != 0:
            print(f"a3s-box shim: publish {topic}: {r.stderr.decode(errors='replace').strip()}", file=sys.stderr)
