"""Generated gRPC code is reproducible from the .proto by `make protos`; fails when stale."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
GENERATED = ("guardrail_pb2.py", "guardrail_pb2.pyi", "guardrail_pb2_grpc.py")


def test_generated_code_is_up_to_date(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT / 'protos'}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        str(ROOT / "protos/latentguard/v1/guardrail.proto"),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / "latentguard/v1" / name).read_text()
        committed = (ROOT / "protos/latentguard/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make protos`"
