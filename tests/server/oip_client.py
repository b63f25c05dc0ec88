"""Run by test_oip.py with the .venv-triton interpreter: tritonclient (protobuf < 7) and latentguard's
own generated code in one process, against a running server. Prints one JSON line of findings."""

import json
import sys

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

target, model = sys.argv[1], sys.argv[2]
client = triton.InferenceServerClient(url=target)
found = {
    "live": client.is_server_live(),
    "ready": client.is_server_ready(),
    "model_ready": client.is_model_ready(model),
    "inputs": [i.name for i in client.get_model_metadata(model).inputs],
}
prompt = triton.InferInput("prompt", [1], "BYTES")
prompt.set_data_from_numpy(np.array([b"a red circle on a blue background"], dtype=object))
seed = triton.InferInput("seed", [1], "INT64")
seed.set_data_from_numpy(np.array([7], dtype=np.int64))
outputs = [triton.InferRequestedOutput(n) for n in ("image", "verdict", "report")]
result = client.infer(model, [prompt, seed], outputs=outputs)
found["png"] = result.as_numpy("image")[0][:4] == b"\x89PNG"
found["verdict"] = result.as_numpy("verdict")[0].decode()
found["report_seed"] = json.loads(result.as_numpy("report")[0])["seed"]
try:
    client.infer("no-such-model", [prompt])
except InferenceServerException as exc:
    found["unknown_model"] = exc.status()
bad = triton.InferInput("prompt", [1], "BYTES")
bad.set_data_from_numpy(np.array([b""], dtype=object))
try:
    client.infer(model, [bad])
except InferenceServerException as exc:
    found["empty_prompt"] = exc.status()
# latentguard's own stubs, generated for protobuf 6.30+, in the same process
stub = pb_grpc.GuardrailStub(grpc.insecure_channel(target))
request = pb.GenerateRequest(deployment=model, prompt="two yellow squares on a white background", steps=2)
found["guardrail_steps"] = stub.Generate(request, timeout=60).report.steps_run
import google.protobuf  # noqa: E402

found["protobuf"] = google.protobuf.__version__
print(json.dumps(found))
