"""Confinement of each box's host side (Firecracker's jailer, for QEMU and helpers).

Threat: the guest is hostile and may take over its VMM (QEMU's device emulation has had
guest-to-host escapes). What it must not reach: the host's files, processes and
network, other boxes, and more CPU, memory or processes than its box was given.

spec.py     JailSpec: what one confined process may see and be (pure, JSON in launch.json)
ids.py      per-box uids and per-template gids from a reserved range
cgroup.py   a cgroup per box below the one a3s-box runs in (v1 and v2), with limits
enter.py    in the child between fork and exec: namespaces, pivot_root, drop to the uid
support.py  what this host supports, for `box doctor` and `security: strict`
"""
