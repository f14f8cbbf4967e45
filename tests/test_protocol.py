"""The committed gRPC stubs are what grpcio-tools makes of agent.proto and compile.proto today.

Installing Baton needs no compiler, so the stubs are committed; this test
fails when someone edits the .proto without regenerating them:

    python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. cluster/protocol/agent.proto
    python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. cluster/protocol/compile.proto
"""
import shutil
from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("cluster/protocol/agent.proto")


@pytest.mark.parametrize("proto", [PROTO, Path("cluster/protocol/compile.proto")], ids=str)
def test_committed_stubs_match_the_proto(tmp_path, proto):
    (tmp_path / proto.parent).mkdir(parents=True)
    shutil.copy(ROOT / proto, tmp_path / proto)
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                        str(tmp_path / proto)]) == 0
    for stub in (f"{proto.stem}_pb2.py", f"{proto.stem}_pb2_grpc.py"):
        generated = (tmp_path / proto.parent / stub).read_text()
        committed = (ROOT / proto.parent / stub).read_text()
        assert generated == committed, f"{proto.parent / stub} is stale: regenerate it (see this test's docstring)"


def _declared_floor(package: str) -> tuple[int, ...]:
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.fullmatch(rf"{re.escape(package)}>=([0-9.]+)(,.*)?", dep.replace(" ", ""))
        if match:
            return tuple(int(part) for part in match.group(1).split("."))
    raise AssertionError(f"pyproject.toml declares no floor for {package}")


def test_the_declared_floors_are_what_the_committed_stubs_need():
    """The stubs refuse an older grpcio or protobuf at import (even `baton --help` would
    crash): the floors pyproject.toml declares must be at least what they were made for."""
    import re

    grpc_stub = (ROOT / PROTO.parent / "agent_pb2_grpc.py").read_text()
    grpc_made_for = re.search(r"GRPC_GENERATED_VERSION = '([0-9.]+)'", grpc_stub).group(1)
    assert _declared_floor("grpcio") >= tuple(int(p) for p in grpc_made_for.split("."))

    pb_stub = (ROOT / PROTO.parent / "agent_pb2.py").read_text()
    major, minor, patch = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb_stub).groups()
    assert _declared_floor("protobuf") >= (int(major), int(minor), int(patch))
