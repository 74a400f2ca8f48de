"""Regenerate api_pb2.py (with its api_pb2.pyi for mypy) and api_pb2_grpc.py from api.proto here with grpcio-tools:
`python tests/k8s/cri/generate.py` (tests/k8s/test_cri_proto.py checks the committed ones are current)."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = HERE / "api.proto"

# protoc's grpc output imports its messages as a top-level module; make it the sibling module
# so the stubs import as the package tests.k8s.cri (or wherever this directory is imported from).
_TOP_LEVEL_IMPORT = "import api_pb2 as api__pb2"
_PACKAGE_IMPORT = "from . import api_pb2 as api__pb2"


def generate(out: Path = HERE) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    rc = protoc.main(["protoc", f"-I{HERE}", f"-I{well_known}", f"--python_out={out}", f"--pyi_out={out}",
                      f"--grpc_python_out={out}", str(PROTO)])
    if rc != 0:
        raise SystemExit(f"protoc failed on {PROTO.name} ({rc})")
    stubs = out / "api_pb2_grpc.py"
    text = stubs.read_text()
    if _TOP_LEVEL_IMPORT + "\n" not in text:
        raise SystemExit(f"{stubs.name}: protoc no longer writes {_TOP_LEVEL_IMPORT!r}; update generate.py")
    stubs.write_text(text.replace(_TOP_LEVEL_IMPORT + "\n", _PACKAGE_IMPORT + "\n"))
    return [out / "api_pb2.py", out / "api_pb2.pyi", stubs]


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
