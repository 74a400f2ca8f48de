"""One warm Python process per home that forks the host processes of boxes.

A box's supervisor (the QEMU shim) is Python. Started with `python -m`, each one paid
the interpreter's start and its imports (about 100 ms under load) and kept its own copy
of them (about 11 MiB Pss). The fork server imports them once, freezes what it holds out
of the garbage collector's reach, and forks one child per request: each box still has a
process of its own (a crash or a kill ends one box, never another), but its start is a
fork and what it did not write since stays shared with its siblings.

    wire.py     the request and replies (sans-IO)
    server.py   the process (`python -m a3s_box.forkserver.server`)
    client.py   spawn(): found, or started, then asked
"""
