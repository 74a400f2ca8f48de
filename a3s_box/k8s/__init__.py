"""Kubernetes through containerd: a runtime v2 shim (`containerd-shim-a3sbox-v2`) that
runs each pod sandbox as one a3s-box microVM. Built so far:

ttrpc.py        ttrpc's framing (sans-IO): the messages containerd and its shims exchange
proto/          the protobuf messages used, from containerd's documented API; the *_pb2.py
                are generated with grpcio-tools (`python -m a3s_box.k8s.proto.generate`)
service.py      the task service's routing (sans-IO): request in, response out
task_service.py its methods (TaskService): protobuf in, protobuf out, each a call on a Task
task.py         one container as a microVM: rootfs mounts -> ext4 disk, process -> guest session
events.py       events back to containerd (/tasks/exit) through its publish binary
shim.py         `containerd-shim-a3sbox-v2`: start, delete, and the daemon serving ttrpc
paths.py        where the shim keeps things: its run folder (sockets), its a3s-box home
annotations.py  the CRI plugin's annotations: the pod sandbox a container belongs to

Threat: the container's code is hostile (it runs in the guest, behind the VM and the
jailed QEMU of a3s_box.jail); containerd and its FIFOs are trusted.

Still to come (issue 15): one VM per pod sandbox (today each container is a VM of its
own), Pids/Stats/Update, the other events (TaskCreate, TaskStart, TaskOOM), the
CRI-level test, resource limits into the guest's cgroups.
"""
