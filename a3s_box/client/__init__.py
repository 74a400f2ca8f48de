"""a3s-box from another machine (or process): a client of `box serve`'s HTTP API.

    from a3s_box.client import Client
    with Client("http://10.0.0.5:8100", token) as client:      # or Client(socket="HOME/api.sock")
        client.apply(open("Boxfile.yaml").read())
        with client.acquire("coders", timeout=30) as box:       # released after
            print(box.run(["echo", "hi"]).stdout)
            box.files.write("/workspace/a.py", "print(1)\\n")
            p = box.spawn(["python3", "-i"], tty=True)           # interactive, over the WebSocket

AsyncClient is the same for asyncio. The models are the server's own (a3s_box.api.models,
from which the OpenAPI document is generated); a refusal or failure is an ApiError with
the server's problem details (`detail`: the message the CLI prints).

wire.py  every call as data: what to send, how to read the answer (sans-IO)
sync.py  Client, RemoteBox, LeasedBox, Process (httpx, websockets' sync client)
aio.py   AsyncClient and the rest, awaited
"""
from __future__ import annotations

from a3s_box.client.aio import AsyncClient, AsyncLeasedBox, AsyncProcess, AsyncRemoteBox
from a3s_box.client.sync import Client, LeasedBox, Process, ProcessExit, RemoteBox
from a3s_box.client.wire import ApiError

__all__ = ["ApiError", "AsyncClient", "AsyncLeasedBox", "AsyncProcess", "AsyncRemoteBox", "Client", "LeasedBox",
           "Process", "ProcessExit", "RemoteBox"]
