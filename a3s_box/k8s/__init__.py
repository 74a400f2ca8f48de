"""Kubernetes through containerd: a runtime v2 shim (`containerd-shim-a3sbox-v2`) that
runs each pod sandbox as one a3s-box microVM. Built so far:

ttrpc.py     ttrpc's framing (sans-IO): the messages containerd and its shims exchange
proto/       the protobuf messages used, from containerd's documented API; the *_pb2.py
             are generated with grpcio-tools (`python -m a3s_box.k8s.proto.generate`)
service.py   the task service's routing (sans-IO): request in, response out
shim.py      `containerd-shim-a3sbox-v2`: start, delete, and the daemon serving ttrpc

Still to come (issue 15): the task service's handlers beyond Connect and Shutdown
(Create, Start, Delete, Kill, Wait, State, Pids, Exec, ResizePty, CloseIO, Update,
Stats), events back to containerd, the RuntimeClass and DaemonSet.
"""
