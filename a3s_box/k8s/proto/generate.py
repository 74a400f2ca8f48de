"""Regenerate the *_pb2.py modules from the .proto files here with grpcio-tools:
`python -m a3s_box.k8s.proto.generate` (a test checks the committed ones are current)."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def generate(out: Path = HERE) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    made = []
    for proto in sorted(HERE.glob("*.proto")):
        rc = protoc.main(["protoc", f"-I{HERE}", f"-I{well_known}", f"--python_out={out}", str(proto)])
        if rc != 0:
            raise SystemExit(f"protoc failed on {proto.name} ({rc})")
        made.append(out / f"{proto.stem}_pb2.py")
    return made


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
