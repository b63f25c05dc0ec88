"""The Open Inference Protocol (KServe v2, as Triton and KServe speak it) on the same port as
latentguard.v1.Guardrail: a second thin servicer over the same core service, so admission, metrics,
cancellation and drain are the same as Generate's.

Each deployment is a model. Inputs (one element each; only `prompt` is required):

    prompt BYTES (UTF-8) | seed INT64 | steps INT32 | height INT32 | width INT32
    guidance_scale FP32 | drill BYTES

Outputs: `image` (BYTES: PNG, empty when the request aborted), `verdict` (BYTES: pass | flag |
abort) and `report` (BYTES: the report as JSON with the proto's field names). Request only some with
`outputs`; the PNG is not encoded unless `image` is asked for. Values may come as typed contents or
as raw bytes (BYTES raw: 4-byte little-endian length, then the bytes); outputs go back raw, as
Triton sends them. Readiness follows the health states: ServerReady and ModelReady are false while
warming and draining.
"""

from __future__ import annotations

import importlib.metadata
import struct
from typing import Any

import grpc
import numpy as np

from latentguard.oip.v2 import inference_pb2 as oip
from latentguard.server.core.service import GuardrailService
from latentguard.server.errors import InvalidArgument
from latentguard.server.pipelines.requests import GenerateRequest
from latentguard.server.rpc import convert
from latentguard.server.rpc.servicer import cancellation

SERVICE_NAME = "inference.GRPCInferenceService"
INPUTS = {
    "prompt": "BYTES",
    "seed": "INT64",
    "steps": "INT32",
    "height": "INT32",
    "width": "INT32",
    "guidance_scale": "FP32",
    "drill": "BYTES",
}
OUTPUTS = {"image": "BYTES", "verdict": "BYTES", "report": "BYTES"}
_NUMPY = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP32": np.float32,
    "FP64": np.float64,
}
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _unpack_bytes(raw: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise InvalidArgument("BYTES raw contents end inside a length prefix")
        (length,) = struct.unpack_from("<I", raw, at)
        if at + 4 + length > len(raw):
            raise InvalidArgument("BYTES raw contents are shorter than an element's length prefix says")
        out.append(raw[at + 4 : at + 4 + length])
        at += 4 + length
    return out


def _pack_bytes(value: bytes) -> bytes:
    return struct.pack("<I", len(value)) + value


def _value(tensor: Any, raw: bytes | None) -> Any:
    """The single element of one input tensor."""
    name, datatype = tensor.name, tensor.datatype
    if datatype not in _CONTENTS:
        raise InvalidArgument(f"input {name!r}: unknown datatype {datatype!r}")
    if raw is not None:
        values: list[Any] = (
            _unpack_bytes(raw)
            if datatype == "BYTES"
            else np.frombuffer(raw, dtype=np.dtype(_NUMPY[datatype]).newbyteorder("<")).tolist()
        )
    else:
        values = list(getattr(tensor.contents, _CONTENTS[datatype]))
    if len(values) != 1 or any(int(s) != 1 for s in tensor.shape):
        raise InvalidArgument(
            f"input {name!r} must hold exactly one element (shape [1]), got shape {list(tensor.shape)}"
        )
    return values[0]


def request_from_infer(msg: Any) -> GenerateRequest:
    if msg.raw_input_contents and len(msg.raw_input_contents) != len(msg.inputs):
        raise InvalidArgument(
            f"{len(msg.raw_input_contents)} raw_input_contents for {len(msg.inputs)} inputs; "
            "give one per input"
        )
    fields: dict[str, Any] = {}
    for i, tensor in enumerate(msg.inputs):
        if tensor.name not in INPUTS:
            raise InvalidArgument(f"unknown input {tensor.name!r}; inputs: {', '.join(INPUTS)}")
        value = _value(tensor, msg.raw_input_contents[i] if msg.raw_input_contents else None)
        if INPUTS[tensor.name] == "BYTES":
            if not isinstance(value, bytes):
                raise InvalidArgument(f"input {tensor.name!r} must be BYTES")
            try:
                value = value.decode()
            except UnicodeDecodeError:
                raise InvalidArgument(f"input {tensor.name!r} is not UTF-8") from None
        elif isinstance(value, bytes | bool):
            raise InvalidArgument(f"input {tensor.name!r} must be a number")
        fields[tensor.name] = value
    if "prompt" not in fields:
        raise InvalidArgument("input 'prompt' (BYTES) is required")
    for name in ("seed", "steps", "height", "width"):
        if name in fields and float(fields[name]) != int(fields[name]):
            raise InvalidArgument(f"input {name!r} must be an integer")
    return GenerateRequest(
        deployment=msg.model_name,
        prompt=fields["prompt"],
        seed=int(fields.get("seed", 0)),
        steps=int(fields.get("steps", 0)),
        width=int(fields.get("width", 0)),
        height=int(fields.get("height", 0)),
        guidance_scale=float(fields["guidance_scale"]) if "guidance_scale" in fields else None,
        drill=fields.get("drill", ""),
    )


def _requested(msg: Any) -> list[str]:
    names = [o.name for o in msg.outputs] or list(OUTPUTS)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise InvalidArgument(f"unknown output(s) {unknown}; outputs: {', '.join(OUTPUTS)}")
    return names


class InferenceServicer:
    def __init__(self, service: GuardrailService):
        self.service = service

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return oip.ServerReadyResponse(ready=self.service.state == "serving")

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ready = self.service.state == "serving" and request.name in self.service.workers
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return oip.ServerMetadataResponse(
            name="latentguard", version=importlib.metadata.version("latentguard")
        )

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        dep = self.service.worker(request.name).dep
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=dep.name,
            versions=["1"],
            platform=f"latentguard-{dep.config.family}-{dep.config.variant}",
            inputs=[tensor(name=n, datatype=t, shape=[1]) for n, t in INPUTS.items()],
            outputs=[tensor(name=n, datatype=t, shape=[1]) for n, t in OUTPUTS.items()],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        outputs = _requested(request)
        result = await self.service.generate(
            request_from_infer(request), cancellation(context), decode="image" in outputs
        )
        values = {  # encoded only when asked for
            "image": lambda: convert.png_bytes(result.image),
            "verdict": lambda: result.report.verdict.encode(),
            "report": lambda: result.report.to_json().encode(),
        }
        tensor = oip.ModelInferResponse.InferOutputTensor
        return oip.ModelInferResponse(
            model_name=request.model_name,
            model_version="1",
            id=request.id,
            outputs=[tensor(name=n, datatype=OUTPUTS[n], shape=[1]) for n in outputs],
            raw_output_contents=[_pack_bytes(values[n]()) for n in outputs],
        )


def add_inference_servicer(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register under the protocol's service name (our messages live in our own package)."""
    methods = {
        "ServerLive": (oip.ServerLiveRequest, oip.ServerLiveResponse),
        "ServerReady": (oip.ServerReadyRequest, oip.ServerReadyResponse),
        "ModelReady": (oip.ModelReadyRequest, oip.ModelReadyResponse),
        "ServerMetadata": (oip.ServerMetadataRequest, oip.ServerMetadataResponse),
        "ModelMetadata": (oip.ModelMetadataRequest, oip.ModelMetadataResponse),
        "ModelInfer": (oip.ModelInferRequest, oip.ModelInferResponse),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name),
            request_deserializer=req.FromString,
            response_serializer=resp.SerializeToString,
        )
        for name, (req, resp) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
