"""The guest side of a box and the host's way of talking to it.

    init/        the guest init (C, static with musl): PID 1 in every VM, and its applets
                 (`nsexec`, `tar`, `fs`, `container`) by the name it is run as
    build.py     build_guest_init(cache_dir) -> Path: compile it into the cache
    protocol.py  the wire format (docs/guest-protocol.md), pure codec
    client.py    GuestClient: one connection, many concurrent sessions
    terminal.py  attach(session, tty) -> exit code, for `box exec -i -t`
    local.py     spawn_local_guest(binary): the init as a host process (`--serve-stdio`)
    relay.py     open_port(client, box, port) -> PortStream: TCP to a port in the box
"""
