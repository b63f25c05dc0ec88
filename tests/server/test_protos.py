"""Generated gRPC code is reproducible from the .proto files by `make protos` (its own venv with the
pinned grpcio-tools); fails when stale, and when the gencode would pin users to protobuf 7."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
PROTOC = ROOT / ".venv-protoc" / "bin" / "python"
PROTOS = {
    "latentguard/v1/guardrail.proto": ("guardrail_pb2.py", "guardrail_pb2.pyi", "guardrail_pb2_grpc.py"),
    "latentguard/oip/v2/inference.proto": ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py"),
}


def test_generated_code_is_up_to_date(tmp_path):
    if not PROTOC.exists():
        pytest.fail("the code generator's venv is missing: run `make protos` (make test creates it)")
    cmd = [
        str(PROTOC),
        "-m",
        "grpc_tools.protoc",
        f"-I{ROOT / 'protos'}",
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        *(str(ROOT / "protos" / p) for p in PROTOS),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    for proto, generated in PROTOS.items():
        folder = Path(proto).parent
        for name in generated:
            fresh = (tmp_path / folder / name).read_text()
            committed = (ROOT / "protos" / folder / name).read_text()
            assert fresh == committed, f"{folder / name} is stale: run `make protos`"


def test_gencode_runs_on_protobuf_6_30_and_later():
    for proto in PROTOS:
        code = (ROOT / "protos" / Path(proto).with_name(Path(proto).stem + "_pb2.py")).read_text()
        found = re.search(
            r"ValidateProtobufRuntimeVersion\(\s*_runtime_version.Domain.PUBLIC,\s*(\d+),\s*(\d+),", code
        )
        assert found is not None and (int(found[1]), int(found[2])) <= (6, 30), found and found.groups()
