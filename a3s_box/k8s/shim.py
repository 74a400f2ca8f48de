"""`containerd-shim-a3sbox-v2`: the runtime v2 shim containerd starts for
`--runtime io.containerd.a3sbox.v2` (runtime_type in a RuntimeClass's handler).

    ... start     launch the shim daemon for this container, print its address
                  (unix://PATH), exit; containerd then speaks ttrpc to it
    ... delete    clean up after a shim containerd can no longer reach; a
                  DeleteResponse protobuf on stdout
    (no command)  the daemon itself: serve the task service on -socket

containerd runs every command with the bundle as the current folder and the flags
-namespace, -address, -publish-binary and -id. One daemon serves a whole pod (one VM):
`start` for a container of a running pod sandbox prints that pod's address.
"""
from __future__ import annotations

import argparse
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from a3s_box.k8s import ttrpc
from a3s_box.k8s.annotations import pod_of, read_annotations
from a3s_box.k8s.events import Publisher
from a3s_box.k8s.paths import RUN_DIR, shim_home, socket_path, vm_rundir
from a3s_box.k8s.service import Dispatcher


def _flags(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="containerd-shim-a3sbox-v2", add_help=False)
    for flag in ("-namespace", "-address", "-publish-binary", "-id", "-bundle", "-socket"):
        p.add_argument(flag, default="")
    p.add_argument("-debug", action="store_true")
    return p.parse_known_args(argv)


def _serving(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def start(opts: argparse.Namespace) -> int:
    # one shim (and one VM) per pod: a container of a running pod gets its sandbox's
    # shim, as the CRI plugin's annotations name it (containerd's runc shim groups so)
    pod_id = pod_of(read_annotations(Path.cwd()), opts.id)
    path = socket_path(opts.namespace, pod_id)
    if pod_id != opts.id and _serving(path):
        sys.stdout.write(f"unix://{path}")
        sys.stdout.flush()
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with open(Path.cwd() / "a3sbox-shim.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "a3s_box.k8s.shim", "-namespace", opts.namespace, "-id", pod_id,
                          "-address", opts.address, "-publish-binary", opts.publish_binary, "-socket", str(path)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + 10
    while not path.exists():
        if time.monotonic() > deadline:
            print("a3s-box shim: the daemon did not start (see a3sbox-shim.log in the bundle)", file=sys.stderr)
            return 1
        time.sleep(0.01)
    sys.stdout.write(f"unix://{path}")
    sys.stdout.flush()
    return 0


def delete(opts: argparse.Namespace) -> int:
    from a3s_box.k8s.pod import reap
    from a3s_box.k8s.proto import shim_pb2

    bundle = Path.cwd()
    pod_id = pod_of(read_annotations(bundle), opts.id)
    reap(shim_home(), bundle, opts.id, pod_id)
    if pod_id == opts.id:
        socket_path(opts.namespace, opts.id).unlink(missing_ok=True)
        shutil.rmtree(vm_rundir(RUN_DIR, pod_id), ignore_errors=True)
    resp = shim_pb2.DeleteResponse(pid=0, exit_status=137)  # type: ignore[attr-defined]
    sys.stdout.buffer.write(resp.SerializeToString())
    sys.stdout.flush()
    return 0


def serve(opts: argparse.Namespace) -> int:
    # the daemon's alone: Task, the VM side and protobuf would cost `shim start`, run
    # once per container, some 50 ms
    from a3s_box.k8s.task_service import TaskService

    path = Path(opts.socket)
    stop = threading.Event()
    tasks = TaskService(stop, Publisher(opts.publish_binary, opts.address, opts.namespace))
    dispatcher = Dispatcher(tasks.handlers())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    listener.bind(str(tmp))
    os.chmod(tmp, 0o600)
    listener.listen(16)
    os.replace(tmp, path)  # the socket appears only once it is listening
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, None)
    readers: dict[int, ttrpc.Reader] = {}
    send_lock = threading.Lock()

    def answer(conn: socket.socket, m: ttrpc.Message) -> None:
        # a request per thread: Wait blocks until its process ends, others must not
        reply = ttrpc.encode(dispatcher.handle(m))
        with send_lock:
            try:
                conn.sendall(reply)
            except OSError:
                pass
    try:
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.5):
                if key.data is None:
                    conn, _ = listener.accept()
                    readers[conn.fileno()] = ttrpc.Reader()
                    sel.register(conn, selectors.EVENT_READ, "conn")
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                data = conn.recv(1 << 16)
                try:
                    msgs = readers[conn.fileno()].feed(data) if data else None
                except ttrpc.TtrpcError:
                    msgs = None
                if msgs is None:  # closed, or not ttrpc: that client is cut off
                    sel.unregister(conn)
                    readers.pop(conn.fileno(), None)
                    conn.close()
                    continue
                for m in msgs:
                    if m.type == ttrpc.TYPE_REQUEST:
                        threading.Thread(target=answer, args=(conn, m), daemon=True).start()
    finally:
        path.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    opts, rest = _flags(sys.argv[1:] if argv is None else argv)
    command = rest[0] if rest else ""
    if command == "start":
        return start(opts)
    if command == "delete":
        return delete(opts)
    if command == "" and opts.socket:
        return serve(opts)
    print(f"containerd-shim-a3sbox-v2: unknown command {command!r} (start, delete)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
