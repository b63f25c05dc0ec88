"""The Open Inference Protocol (KServe v2) endpoint: our own messages over the protocol's method
paths, and the real tritonclient from its own venv (protobuf < 7), latentguard's stubs beside it."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import grpc
import pytest

from latentguard.oip.v2 import inference_pb2 as oip
from latentguard.server.rpc.client import channel

from .grpc_harness import ServerThread, make_settings, scrape, value

TRITON_PYTHON = Path(__file__).parent.parent.parent / ".venv-triton" / "bin" / "python"
METHOD = "/inference.GRPCInferenceService/{}"
RESPONSES = {
    "ServerLive": oip.ServerLiveResponse,
    "ServerReady": oip.ServerReadyResponse,
    "ModelReady": oip.ModelReadyResponse,
    "ServerMetadata": oip.ServerMetadataResponse,
    "ModelMetadata": oip.ModelMetadataResponse,
    "ModelInfer": oip.ModelInferResponse,
}


def call(target: str, method: str, request, timeout: float = 60):
    rpc = channel(target).unary_unary(
        METHOD.format(method),
        request_serializer=type(request).SerializeToString,
        response_deserializer=RESPONSES[method].FromString,
    )
    return rpc(request, timeout=timeout)


def bytes_input(name: str, value: bytes):
    return oip.ModelInferRequest.InferInputTensor(
        name=name, datatype="BYTES", shape=[1], contents=oip.InferTensorContents(bytes_contents=[value])
    )


def unpack(raw: bytes) -> bytes:
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length]


@pytest.fixture(scope="module")
def server():
    srv = ServerThread(make_settings()).start()
    yield srv
    srv.stop()


def test_readiness_and_metadata(server):
    assert call(server.target, "ServerLive", oip.ServerLiveRequest()).live
    assert call(server.target, "ServerReady", oip.ServerReadyRequest()).ready
    assert call(server.target, "ModelReady", oip.ModelReadyRequest(name="tiny-flux")).ready
    assert not call(server.target, "ModelReady", oip.ModelReadyRequest(name="nope")).ready
    meta = call(server.target, "ModelMetadata", oip.ModelMetadataRequest(name="tiny-sd3"))
    assert meta.inputs[0].name == "prompt" and {t.name for t in meta.outputs} == {
        "image",
        "verdict",
        "report",
    }
    assert call(server.target, "ServerMetadata", oip.ServerMetadataRequest()).name == "latentguard"


def test_infer_returns_image_verdict_report_and_counts_like_generate(server):
    before = scrape(server)
    seed = oip.ModelInferRequest.InferInputTensor(
        name="seed", datatype="INT64", shape=[1], contents=oip.InferTensorContents(int64_contents=[5])
    )
    request = oip.ModelInferRequest(
        model_name="tiny-sd3",
        id="r1",
        inputs=[bytes_input("prompt", b"a red circle on a blue background"), seed],
    )
    response = call(server.target, "ModelInfer", request)
    outputs = {
        o.name: unpack(raw) for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
    assert outputs["image"].startswith(b"\x89PNG") and response.id == "r1"
    report = json.loads(outputs["report"])
    assert report["seed"] == 5 and outputs["verdict"].decode() == report["verdict"]
    labels = {"deployment": "tiny-sd3", "family": "sd3", "variant": "fp32"}
    outcome = {"pass": "ok", "flag": "flagged", "abort": "aborted"}[report["verdict"]]
    delta = value(scrape(server), "latentguard_requests_total", **labels, outcome=outcome) - value(
        before, "latentguard_requests_total", **labels, outcome=outcome
    )
    assert delta == 1
    # raw contents, and only the outputs asked for (no PNG encoded)
    raw = oip.ModelInferRequest(
        model_name="tiny-flux",
        inputs=[oip.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1])],
        raw_input_contents=[struct.pack("<I", 9) + b"a red sun"],
        outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="verdict")],
    )
    only = call(server.target, "ModelInfer", raw)
    assert [o.name for o in only.outputs] == ["verdict"] and unpack(only.raw_output_contents[0]) in (
        b"pass",
        b"flag",
    )


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"model_name": "nope", "inputs": [bytes_input("prompt", b"x")]}, grpc.StatusCode.NOT_FOUND),
        ({"model_name": "tiny-sd3", "inputs": []}, grpc.StatusCode.INVALID_ARGUMENT),
        (
            {"model_name": "tiny-sd3", "inputs": [bytes_input("colour", b"red")]},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            {"model_name": "tiny-sd3", "inputs": [bytes_input("prompt", b"\xff\xfe")]},
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            {
                "model_name": "tiny-sd3",
                "inputs": [bytes_input("prompt", b"x"), bytes_input("drill", b"nope:1")],
            },
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
)
def test_bad_requests_get_the_right_status(server, request_fields, code):
    with pytest.raises(grpc.RpcError) as info:
        call(server.target, "ModelInfer", oip.ModelInferRequest(**request_fields))
    assert info.value.code() == code


def test_tritonclient_and_latentguard_stubs_in_one_environment(server):
    if not TRITON_PYTHON.exists():
        pytest.fail("the tritonclient venv is missing: `make test` creates .venv-triton")
    script = Path(__file__).with_name("oip_client.py")
    proc = subprocess.run(
        [str(TRITON_PYTHON), str(script), server.target, "tiny-sd3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["protobuf"].startswith("6."), found  # tritonclient's protobuf, not ours
    assert found["live"] and found["ready"] and found["model_ready"] and found["inputs"][0] == "prompt"
    assert found["png"] and found["verdict"] in ("pass", "flag") and found["report_seed"] == 7
    assert (
        found["unknown_model"] == "StatusCode.NOT_FOUND"
        and found["empty_prompt"] == "StatusCode.INVALID_ARGUMENT"
    )
    assert found["guardrail_steps"] == 2
