"""The committed gRPC stubs are what grpcio-tools makes of agent.proto today.

Installing Baton needs no compiler, so the stubs are committed; this test
fails when someone edits the .proto without regenerating them:

    python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. cluster/protocol/agent.proto
"""
import shutil
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = Path("cluster/protocol/agent.proto")


def test_committed_stubs_match_the_proto(tmp_path):
    (tmp_path / PROTO.parent).mkdir(parents=True)
    shutil.copy(ROOT / PROTO, tmp_path / PROTO)
    assert protoc.main(["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                        str(tmp_path / PROTO)]) == 0
    for stub in ("agent_pb2.py", "agent_pb2_grpc.py"):
        generated = (tmp_path / PROTO.parent / stub).read_text()
        committed = (ROOT / PROTO.parent / stub).read_text()
        assert generated == committed, f"{PROTO.parent / stub} is stale: regenerate it (see this test's docstring)"
