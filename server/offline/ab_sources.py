"""Where A/B runs come from: this process (`InProcessSource`) or a running server over gRPC
(`GrpcSource`, Generate with return_trajectory). Both give the same `RunRecord`."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import psutil
import torch
from PIL import Image

from latentguard.server.config import Settings
from latentguard.server.errors import NotFound
from latentguard.server.pipelines.deployments import Deployment, load_deployment
from latentguard.server.pipelines.requests import GenerateRequest, resolve
from latentguard.server.pipelines.runner import PipelineRunner
from latentguard.server.pipelines.trajectory_record import RecordedTrajectory
from latentguard.server.report import Report
from latentguard.server.rpc.client import channel
from latentguard.server.rpc.convert import report_from_proto, request_to_proto, trajectory_from_proto
from latentguard.server.rpc.security import ClientTls
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc


@dataclass
class RunRecord:
    verdict: str
    scores: dict[str, float]  # detector -> request score; detectors that raised are left out
    flagged: dict[str, bool]
    steps_run: int
    steps_requested: int
    seconds: float
    image: np.ndarray | None  # H x W x 3 uint8; None when aborted
    trajectory: RecordedTrajectory | None  # until the pair is reduced (Pair.of)
    peak_rss_mb: float | None = None

    @classmethod
    def from_report(cls, report: Report, seconds: float, image: np.ndarray | None, **kw: object) -> RunRecord:
        return cls(
            verdict=report.verdict,
            scores={d.name: d.score for d in report.detectors if not d.error},
            flagged={d.name: d.flagged for d in report.detectors},
            steps_run=report.steps_run,
            steps_requested=report.steps_requested,
            seconds=seconds,
            image=image,
            **kw,  # type: ignore[arg-type]
        )


@dataclass
class VariantInfo:
    name: str
    variant: str
    weight_mb: float | None


class Source(Protocol):
    def info(self, deployment: str) -> VariantInfo: ...

    def run(self, deployment: str, prompt: str, seed: int, drill: str) -> RunRecord: ...


def _decode_png(data: bytes) -> np.ndarray | None:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) if data else None


class InProcessSource:
    """Loads the two deployments in this process (sharing encoders and VAE, as `serve` does)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.deployments: dict[str, Deployment] = {}

    def _dep(self, name: str) -> Deployment:
        if name not in self.deployments:
            self.deployments[name] = load_deployment(self.settings.deployment(name), self.settings.device)
        return self.deployments[name]

    def info(self, deployment: str) -> VariantInfo:
        dep = self._dep(deployment)
        return VariantInfo(deployment, dep.config.variant, dep.weight_bytes / 2**20)

    def run(self, deployment: str, prompt: str, seed: int, drill: str) -> RunRecord:
        dep = self._dep(deployment)
        req = resolve(
            GenerateRequest(deployment, prompt, seed=seed, drill=drill, return_trajectory=True),
            dep,
            self.settings.limits,
        )
        process, peak = psutil.Process(), [0]

        def sample_memory(verdict) -> None:
            peak[0] = max(peak[0], process.memory_info().rss)

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result = PipelineRunner(dep, self.settings.backend).generate(req, on_step=sample_memory)
        peak_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else peak[0] / 2**20
        assert result.trajectory is not None
        return RunRecord.from_report(
            result.report,
            result.report.timings.total_seconds,
            np.asarray(result.image.convert("RGB")) if result.image is not None else None,
            trajectory=result.trajectory,
            peak_rss_mb=peak_mb,
        )


class GrpcSource:
    """Against a running `latentguard serve`: Generate with return_trajectory=True."""

    def __init__(
        self, target: str, tls: ClientTls | None = None, token: str | None = None, timeout: float = 600
    ):
        self.stub = pb_grpc.GuardrailStub(channel(target, tls, token))
        self.timeout = timeout
        self.listed = {
            d.name: d for d in self.stub.ListDeployments(pb.ListDeploymentsRequest(), timeout=30).deployments
        }

    def info(self, deployment: str) -> VariantInfo:
        if deployment not in self.listed:
            raise NotFound.deployment(deployment, list(self.listed))
        d = self.listed[deployment]
        return VariantInfo(
            deployment, d.variant, d.transformer_bytes / 2**20 if d.transformer_bytes else None
        )

    def run(self, deployment: str, prompt: str, seed: int, drill: str) -> RunRecord:
        req = request_to_proto(
            GenerateRequest(deployment, prompt, seed=seed, drill=drill, return_trajectory=True)
        )
        start = time.perf_counter()
        resp = self.stub.Generate(req, timeout=self.timeout)
        seconds = time.perf_counter() - start
        # seconds as the client sees them: network and PNG encoding included
        return RunRecord.from_report(
            report_from_proto(resp.report),
            seconds,
            _decode_png(resp.image_png),
            trajectory=trajectory_from_proto(resp.trajectory),
        )
