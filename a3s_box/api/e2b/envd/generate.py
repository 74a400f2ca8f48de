"""Regenerate the envd modules from E2B's .proto files here: `python -m a3s_box.api.e2b.envd.generate`
(a test checks the committed ones are current). protoc comes from grpcio-tools; the plugins
are protoc-gen-py (protobuf-py messages) and protoc-gen-connectrpc (Connect services), the
generators E2B's own Python SDK is built with, so both ends speak the same code."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("process/process.proto", "filesystem/filesystem.proto")


def generate(out: Path = HERE) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    bindir = str(Path(sys.executable).parent)  # the plugins are console scripts of this venv
    for plugin in ("protoc-gen-py", "protoc-gen-connectrpc"):
        if shutil.which(plugin, path=bindir + os.pathsep + os.environ.get("PATH", "")) is None:
            raise SystemExit(f"{plugin} is not installed (pip install -e '.[test]')")
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/timestamp.proto
    rc = protoc.main(["protoc", f"-I{HERE}", f"-I{well_known}", f"--py_out={out}", f"--connectrpc_out={out}",
                      *(str(HERE / p) for p in PROTOS)])
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    made = []
    for p in PROTOS:
        stem = Path(p)
        made += [out / stem.parent / f"{stem.stem}_pb.py", out / stem.parent / f"{stem.stem}_connect.py"]
    return made


if __name__ == "__main__":
    for p in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
