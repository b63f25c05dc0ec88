"""Client side: a gRPC channel (TLS, bearer token) and the one-line diffusers callback for sidecar mode.

    cb = InspectCallback("localhost:50051", "tiny-sd3", pipe, initial=latents, height=256, width=256)
    pipe(prompt, latents=latents, callback_on_step_end=cb)

streams the pipeline's own latents to a running sidecar's `Inspect` and interrupts the pipeline when
the verdict is abort (`pipelined=True`: without waiting for each step's verdict; see the class). The
initial noise must be known: pass the `latents=` you give the pipeline as `initial`. With
`tls=ClientTls(ca=...)` and `token=...` it works against a secured sidecar.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import torch

from latentguard.server.pipelines.families import family_of
from latentguard.server.rpc import tensors
from latentguard.server.rpc.security import ClientTls, client_channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

MAX_MESSAGE = 64 * 1024 * 1024


def channel(target: str, tls: ClientTls | None = None, token: str | None = None) -> grpc.Channel:
    """A channel to a latentguard server: plaintext, or TLS when `tls` is given; `token` goes with
    every call as `authorization: Bearer ...` (use TLS for anything but loopback)."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    return client_channel(target, options, tls, token)


def tensor_frame(latents: torch.Tensor, step: int, **fields: Any) -> pb.InspectFrame:
    raw, dtype, shape = tensors.encode(latents)
    return pb.InspectFrame(step=step, latents=raw, dtype=dtype, shape=shape, **fields)


class InspectCallback:
    """A diffusers `callback_on_step_end` that asks a latentguard sidecar for a verdict every step.

    Works for SD3 and FLUX pipelines (FLUX latents are unpacked before sending). After the run,
    `verdicts` holds one `InspectVerdict` per step and `report` the sidecar's final report.

    Blocking (default): each step waits for its own verdict, so an abort stops the pipeline before
    the next step runs. `pipelined=True`: each step sends its frame and reads the verdict of the step
    before, which the sidecar scored while the model computed this one; where the sidecar has cores
    of its own the pipeline pays only the copy-out and the send, and an abort stops it one step later
    (the frame of the extra step is scored too). The verdicts are the same in both modes (the
    sidecar sees the same frames).
    """

    def __init__(
        self,
        target: str,
        deployment: str,
        pipe: Any,
        initial: torch.Tensor,
        height: int,
        width: int,
        tls: ClientTls | None = None,
        token: str | None = None,
        pipelined: bool = False,
    ):
        self.stub = pb_grpc.GuardrailStub(channel(target, tls, token))
        self.deployment, self.pipe, self.height, self.width = deployment, pipe, height, width
        self.family = family_of(pipe)
        self.initial = initial
        self.pipelined = pipelined
        self.verdicts: list[pb.InspectVerdict] = []
        self.report: pb.Report | None = None
        self._out: queue.Queue[pb.InspectFrame | None] = queue.Queue()
        self._responses: Iterator[pb.InspectVerdict] | None = None
        self._unread = 0  # frames sent whose verdicts have not been read

    def _unpack(self, latents: torch.Tensor) -> torch.Tensor:
        return self.family.from_pipeline(latents, self.pipe, self.height, self.width)

    def _frames(self) -> Iterator[pb.InspectFrame]:
        while (frame := self._out.get()) is not None:
            yield frame

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._responses is None:
            sigmas = [float(s) for s in pipe.scheduler.sigmas]
            self._out.put(
                tensor_frame(self._unpack(self.initial), -1, deployment=self.deployment, sigmas=sigmas)
            )
            self._responses = self.stub.Inspect(self._frames())
        self._out.put(tensor_frame(self._unpack(kwargs["latents"]), step))
        self._unread += 1
        last = step == len(pipe.scheduler.sigmas) - 2
        keep_unread = 1 if self.pipelined and not last else 0
        while self._unread > keep_unread and not self.aborted:
            self.verdicts.append(next(self._responses))
            self._unread -= 1
        if self.aborted or last:
            if self.aborted:
                self.family.interrupt(pipe)
            self.close()
        return {}

    @property
    def aborted(self) -> bool:
        return bool(self.verdicts) and self.verdicts[-1].verdict == "abort"

    def close(self) -> None:
        """End the stream: the verdicts not read yet, then the report."""
        if self._responses is None or self.report is not None:
            return
        self._out.put(None)
        for final in self._responses:
            if final.HasField("report"):
                self.report = final.report
            else:
                self.verdicts.append(final)
        self._unread = 0
