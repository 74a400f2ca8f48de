"""Events back to containerd (what its CRI plugin tracks tasks by), through the binary
containerd names with -publish-binary: `BINARY --address ADDR publish --topic T
--namespace NS`, a protobuf Any on its stdin."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Publisher:
    binary: str
    address: str
    namespace: str

    def exit(self, container_id: str, process_id: str, pid: int, status: int, at: float) -> None:
        from google.protobuf.any_pb2 import Any as AnyMsg
        from google.protobuf.timestamp_pb2 import Timestamp

        from a3s_box.k8s.proto import shim_pb2

        stamp = Timestamp()
        stamp.FromNanoseconds(int(at * 1e9))
        event: Any = shim_pb2.TaskExit(container_id=container_id, id=process_id, pid=pid,  # type: ignore[attr-defined]
                                       exit_status=status, exited_at=stamp)
        wrapped = AnyMsg(type_url="containerd.events.TaskExit", value=event.SerializeToString())
        self._publish("/tasks/exit", wrapped.SerializeToString())

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
