"""The task service's routing, sans-IO: a ttrpc request in, a ttrpc response out.

Handlers take the request's protobuf payload and return the response's; a ShimError
becomes a gRPC status (containerd shows its message); a method without a handler
answers UNIMPLEMENTED, naming it."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from a3s_box.errors import BoxError
from a3s_box.k8s import ttrpc

SERVICE = "containerd.task.v2.Task"
OK, INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNIMPLEMENTED, INTERNAL = 0, 3, 5, 9, 12, 13

Handler = Callable[[bytes], bytes]


class ShimError(Exception):
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


class Dispatcher:
    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = dict(handlers)

    def handle(self, m: ttrpc.Message) -> ttrpc.Message:
        try:
            req = ttrpc.parse_request(m)
        except ttrpc.TtrpcError as e:
            return ttrpc.response(m.stream, code=INTERNAL, message=str(e))
        if req.service != SERVICE or req.method not in self.handlers:
            return ttrpc.response(m.stream, code=UNIMPLEMENTED,
                                  message=f"a3s-box's shim does not implement {req.service}.{req.method} yet")
        try:
            return ttrpc.response(m.stream, self.handlers[req.method](bytes(req.payload)))
        except ShimError as e:
            return ttrpc.response(m.stream, code=e.code, message=str(e))
        except BoxError as e:  # the VM could not boot, the guest did not answer...
            return ttrpc.response(m.stream, code=FAILED_PRECONDITION, message=str(e))
        except Exception as e:  # noqa: BLE001 - containerd must get an answer, never a hang
            return ttrpc.response(m.stream, code=INTERNAL, message=f"{type(e).__name__}: {e}")
