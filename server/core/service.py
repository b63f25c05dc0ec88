"""The core service: deployments, admission, workers, cancellation, sessions. No gRPC in here.

Each deployment has a worker thread (one pipeline, one device; on CPU all deployments share one, see
`threads.compute_threads`) and an admission count of
1 + `max_queue` requests; beyond that a request is refused at once (ResourceExhausted), never
queued without bound. Admitted requests run in dynamic batches (batching.py). Model work runs on the
worker, off the event loop. A cancelled or expired request leaves its batch at the next step
boundary (the pipeline is interrupted once no element is left).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from latentguard.detectors import StepVerdict
from latentguard.kernels.compiled import warm_up_compiled
from latentguard.kernels.dispatch import warm_up as warm_up_kernels
from latentguard.server.config import Settings, ShadowConfig
from latentguard.server.core.batching import Batcher
from latentguard.server.core.canaries import Canaries
from latentguard.server.core.drift import FleetDrift
from latentguard.server.core.evidence import EvidenceRecorder
from latentguard.server.core.live_calibration import LiveCalibrations
from latentguard.server.core.sessions import InspectSession
from latentguard.server.core.shadow import ShadowJob, ShadowMirror
from latentguard.server.core.threads import compute_threads, side_executor
from latentguard.server.core.tracing import Tracing
from latentguard.server.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from latentguard.server.metrics import DeploymentLabels, Metrics, Outcome, outcome_of
from latentguard.server.pipelines.canaries import CanaryReport
from latentguard.server.pipelines.deployments import Deployment, load_deployment
from latentguard.server.pipelines.requests import GenerateRequest, ResolvedRequest, resolve
from latentguard.server.pipelines.runner import Element, GenerateResult, PipelineRunner, StepHook
from latentguard.server.report import Report

log = logging.getLogger(__name__)
State = Literal["warming", "serving", "draining"]


class Cancellation:
    """Set from the event loop (client cancel) or by the clock (deadline); read by the worker each step."""

    def __init__(self, timeout: float | None = None):
        self._event = threading.Event()
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def should_stop(self) -> bool:
        return self.cancelled or self.expired


@dataclass(frozen=True)
class RequestRecord:
    """What happened to one finished request (kept for the last few hundred, for introspection)."""

    deployment: str
    outcome: Outcome
    steps_run: int  # -1 when unknown (refused, or the run raised)


class DeploymentWorker:
    def __init__(self, dep: Deployment, settings: Settings, metrics: Metrics, executor: ThreadPoolExecutor):
        self.dep = dep
        self.runner = PipelineRunner(dep, backend=settings.backend)
        self.executor = executor
        self.batcher = Batcher(
            self.runner,
            self.executor,
            dep.config.max_batch_size,
            dep.config.max_batch_delay_ms,
            lambda size: metrics.observe_batch(dep.name, size),
        )
        self.capacity = 1 + dep.config.max_queue
        self.admitted = 0  # touched only on the event loop

    def reserve(self) -> None:
        if self.admitted >= self.capacity:
            raise ResourceExhausted(
                f"deployment {self.dep.name} is at capacity "
                f"({self.capacity - 1} queued + 1 running); retry later"
            )
        self.admitted += 1

    def release(self) -> None:
        self.admitted -= 1


class GuardrailService:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.state: State = "warming"
        self.workers: dict[str, DeploymentWorker] = {}
        self.inspect_executor = side_executor(min(4, settings.max_inspect_sessions), "lg-inspect")
        self.inspect_sessions = 0
        self.recent: deque[RequestRecord] = deque(maxlen=256)
        self.worker_thread = compute_threads(settings)
        self.shadow = ShadowMirror(settings.shadow, metrics)
        self.drift = FleetDrift(metrics)
        self.canaries = Canaries(metrics, self.primary_busy)
        self.evidence = EvidenceRecorder(metrics)
        self.live_calibration = LiveCalibrations(metrics)
        self.tracing = Tracing(settings.tracing)
        self.on_state_change: Callable[[State], None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def _set_state(self, state: State) -> None:
        self.state = state
        if self.on_state_change is not None:
            self.on_state_change(state)

    async def start(self) -> None:
        """Load every deployment (and warm it up) off the event loop, then report SERVING."""
        loop = asyncio.get_running_loop()
        for cfg in self.settings.deployments:
            executor = self.worker_thread(cfg.name)
            dep = await loop.run_in_executor(executor, load_deployment, cfg, self.settings.device)
            worker = DeploymentWorker(dep, self.settings, self.metrics, executor)
            _, channels, max_h, max_w = dep.family.latent_shape(
                dep.pipe, 1, *[self.settings.limits.max_side] * 2
            )
            await loop.run_in_executor(
                executor, warm_up_kernels, dep.pipe.device, channels, max_h, max_w, self.settings.backend
            )
            if self.settings.compile_stats and dep.pipe.device.type == "cpu":
                _, _, h, w = dep.family.latent_shape(dep.pipe, 1, cfg.height, cfg.width)
                for thread in (executor, self.inspect_executor):  # their torch thread counts differ
                    await loop.run_in_executor(thread, warm_up_compiled, h, w)
            if self.settings.warmup:
                warm = resolve(GenerateRequest(dep.name, "warm-up", steps=2), dep, self.settings.limits)
                await loop.run_in_executor(worker.executor, worker.runner.generate, warm)
            self.workers[dep.name] = worker
            if dep.drift is not None:
                self.drift.watch(dep.name, dep.drift, cfg.drift)
            if dep.canaries is not None:
                self.canaries.watch(dep.name, worker.runner, worker.executor, cfg.canaries)
            if cfg.evidence is not None:
                await loop.run_in_executor(None, self.evidence.watch, dep.name, cfg.evidence, dep.fingerprint)
            if cfg.live_calibration is not None and dep.profile is None:
                live = self.live_calibration
                await loop.run_in_executor(executor, live.watch, dep, cfg.live_calibration, executor)
            self.metrics.set_capacity(dep.name, worker.capacity)
            log.info("deployment %s ready (%s, %s)", dep.name, cfg.family, cfg.variant)
            if self.state != "warming":  # drained while loading: never report serving
                return
        self._set_state("serving")

    def drain(self) -> None:
        self._set_state("draining")
        self.shadow.close()
        self.canaries.close()

    def close(self) -> None:
        for w in self.workers.values():
            w.batcher.close(Unavailable("latentguard is shutting down"))
            w.executor.shutdown(wait=False, cancel_futures=True)
        self.inspect_executor.shutdown(wait=False, cancel_futures=True)
        self.drift.close()
        self.evidence.close()  # bundles handed over are still written before the process exits
        self.tracing.close()

    def _check_serving(self) -> None:
        if self.state != "serving":
            raise Unavailable(f"latentguard is {self.state}; retry on another replica or later")

    def worker(self, name: str) -> DeploymentWorker:
        self._check_serving()
        if name not in self.workers:
            raise NotFound.deployment(name, list(self.workers))
        return self.workers[name]

    def deployments(self) -> list[Deployment]:
        return [w.dep for w in self.workers.values()]

    # --- Generate --------------------------------------------------------------------------------
    def _admit(self, req: GenerateRequest) -> tuple[DeploymentWorker, ResolvedRequest]:
        """Validate and reserve a slot; every refusal of a known deployment counts as `rejected`."""
        try:
            worker = self.worker(req.deployment)
            resolved = resolve(req, worker.dep, self.settings.limits)
            worker.reserve()
        except (InvalidArgument, ResourceExhausted, Unavailable):
            self._count(req.deployment, "rejected")
            raise
        self.metrics.set_admitted(req.deployment, worker.admitted)
        return worker, resolved

    async def generate(
        self,
        req: GenerateRequest,
        cancel: Cancellation,
        on_step: StepHook | None = None,
        decode: bool = True,
    ) -> GenerateResult:
        """Run one request on its deployment's worker. Every admitted request ends in exactly one
        outcome (ok, flagged, aborted, error, cancelled), recorded once."""
        worker, resolved = self._admit(req)
        request_id = uuid.uuid4().hex
        span = self.tracing.start("latentguard.Generate", req.deployment)
        on_step = Tracing.step_hook(span, on_step)
        try:
            ids = (request_id, Tracing.trace_id(span))
            result = await self._generate(worker, req, resolved, cancel, on_step, decode, ids)
        except BaseException as exc:
            Tracing.finish(span, None, "cancelled" if isinstance(exc, asyncio.CancelledError) else "error")
            raise
        Tracing.finish(span, result.report, outcome_of(result.report))
        self.evidence.submit(result.report, result.image, result.snapshots, req.prompt, "generate")
        return result

    async def _generate(
        self,
        worker: DeploymentWorker,
        req: GenerateRequest,
        resolved: ResolvedRequest,
        cancel: Cancellation,
        on_step: StepHook | None,
        decode: bool,
        ids: tuple[str, str],
    ) -> GenerateResult:
        """`generate` once admitted; `ids`: the request's id and trace id, for its report."""
        mirrors = self.shadow.sample(req.deployment)
        run = dataclasses.replace(resolved, return_trajectory=True) if mirrors else resolved
        start = time.perf_counter()
        job = asyncio.wrap_future(worker.batcher.submit(Element(run, cancel.should_stop, on_step, decode)))
        caller_left = False
        try:
            try:
                result = await asyncio.shield(job)
            except asyncio.CancelledError:
                # the caller cancelled or its deadline passed: stop denoising at the next step boundary and
                # wait for the worker, so admission and the record reflect what really ran
                caller_left = True
                cancel.cancel()
                result = await job
        except Exception:
            log.exception("request on %s failed", req.deployment)
            self._count(req.deployment, "error", time.perf_counter() - start)
            raise
        finally:
            worker.release()
            self.metrics.set_admitted(req.deployment, worker.admitted)
        report, seconds = result.report, time.perf_counter() - start
        report.request_id, report.trace_id = ids
        stopped_early = report.steps_run < report.steps_requested and report.verdict != "abort"
        if stopped_early and cancel.expired:
            self._count(req.deployment, "error", seconds, report)
            raise DeadlineExceeded(
                f"deadline exceeded after {report.steps_run} of {report.steps_requested} steps; "
                "denoising stopped"
            )
        if caller_left:
            self._count(req.deployment, "cancelled", seconds, report)
            log.info("request on %s cancelled after %d steps", req.deployment, report.steps_run)
            raise asyncio.CancelledError()
        self._finished(report, seconds)
        if result.drift_summary is not None:
            self.drift.add(req.deployment, result.drift_summary)
        if result.calibration_run is not None:
            self.live_calibration.add(req.deployment, req.prompt, result.calibration_run)
        if mirrors:
            self._mirror(mirrors, resolved, result)
            if not resolved.return_trajectory:
                result = dataclasses.replace(result, trajectory=None)
        return await self._attributed(worker, resolved, result, cancel)

    async def _attributed(
        self, worker: DeploymentWorker, req: ResolvedRequest, result: GenerateResult, cancel: Cancellation
    ) -> GenerateResult:
        """A deployment with `attribution` replays a flagged request without its adapters, on its
        worker, after the request is counted (the replay holds no admission slot)."""
        if not worker.dep.config.attribution or result.report.verdict == "pass":
            return result
        loop = asyncio.get_running_loop()
        replay = loop.run_in_executor(
            worker.executor, worker.runner.attribute, req, result.report, cancel.should_stop
        )
        try:
            attribution = await asyncio.shield(replay)
        except asyncio.CancelledError:
            cancel.cancel()  # the caller left: stop the replay at its next step
            raise
        if attribution is None:  # stopped by its deadline: answer without it
            return result
        return dataclasses.replace(result, report=dataclasses.replace(result.report, attribution=attribution))

    def _mirror(self, mirrors: list[ShadowConfig], resolved: ResolvedRequest, result: GenerateResult) -> None:
        finished = result.report.steps_run == result.report.steps_requested
        for cfg in mirrors:
            if not finished or result.trajectory is None or cfg.candidate not in self.workers:
                self.metrics.shadow_outcome(cfg.baseline, cfg.candidate, "skipped")
                continue
            target = self.workers[cfg.candidate]
            self.shadow.launch(
                ShadowJob(cfg, resolved, result.trajectory, target.runner, target.executor, self.primary_busy)
            )

    def in_flight(self) -> int:
        """Generate requests admitted and not yet answered, plus open Inspect sessions (the drain
        waits for these)."""
        return sum(w.admitted for w in self.workers.values()) + self.inspect_sessions

    def primary_busy(self) -> bool:
        """Shadow runs yield to this: any primary request admitted anywhere, or draining.

        Called from worker threads; it only reads ints and a string."""
        return self.state != "serving" or any(w.admitted for w in self.workers.values())

    async def run_canaries(self, deployment: str) -> CanaryReport:
        """The RunCanaries RPC: a deployment's canaries now, to the end."""
        self.worker(deployment)  # serving, and a known deployment
        if deployment not in self.canaries.watched:
            raise FailedPrecondition(
                f"deployment {deployment} has no canary reference (run `latentguard canary-reference`)"
            )
        report = await self.canaries.run(deployment)
        assert report is not None  # only a preemptible round stops early
        return report

    # --- accounting: the one place where a request's outcome is recorded --------------------------
    def _finished(self, report: Report, seconds: float | None = None) -> None:
        """A request that ran to its verdict (ok, flagged or aborted)."""
        self.recent.append(RequestRecord(report.deployment, outcome_of(report), report.steps_run))
        self.metrics.observe(report, seconds)

    def _count(
        self,
        deployment: str,
        outcome: Outcome,
        seconds: float | None = None,
        report: Report | None = None,
    ) -> None:
        """A request that ended without a verdict: rejected, error or cancelled."""
        self.recent.append(RequestRecord(deployment, outcome, report.steps_run if report else -1))
        self.metrics.count(deployment, outcome, seconds)

    # --- Inspect ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def inspect(self) -> AsyncIterator[InspectCall]:
        """One Inspect stream: a session slot for its lifetime, and exactly one outcome once it has
        named its deployment (its verdict, or rejected / error / cancelled when it ends early)."""
        self._check_serving()
        if self.inspect_sessions >= self.settings.max_inspect_sessions:
            raise ResourceExhausted(
                f"{self.inspect_sessions} Inspect sessions open; the limit is "
                f"{self.settings.max_inspect_sessions}"
            )
        self.inspect_sessions += 1
        call = InspectCall(self)
        try:
            yield call
        except (asyncio.CancelledError, GeneratorExit, DeadlineExceeded):  # the client left or went silent
            call.ended("cancelled")
            raise
        except (InvalidArgument, NotFound, ResourceExhausted, Unavailable):
            call.ended("rejected")
            raise
        except Exception:
            call.ended("error")
            raise
        finally:
            self.inspect_sessions -= 1


class InspectCall:
    """The core side of one Inspect stream: the first frame opens a session, later ones are scored."""

    def __init__(self, service: GuardrailService):
        self.service = service
        self.session: InspectSession | None = None
        self.done = False
        self.span: Any = None
        self.on_verdict: StepHook | None = None

    async def frame(
        self, deployment: str, sigmas: list[float], step: int, latents: torch.Tensor
    ) -> StepVerdict | None:
        """The verdict for a step frame; None for the opening frame (step -1, the initial noise)."""
        loop = asyncio.get_running_loop()
        executor = self.service.inspect_executor  # torch runs there, pinned: never on the event loop
        if self.session is None:
            if step != -1:
                raise InvalidArgument("the first Inspect frame must be the initial noise, with step = -1")
            dep = self.service.worker(deployment).dep
            limits = self.service.settings.limits
            self.session = await loop.run_in_executor(executor, InspectSession, dep, sigmas, latents, limits)
            self.span = self.service.tracing.start("latentguard.Inspect", deployment)
            self.on_verdict = Tracing.step_hook(self.span, None)
            return None
        verdict = await loop.run_in_executor(executor, self.session.step, step, latents)
        if self.on_verdict is not None:
            self.on_verdict(verdict)
        return verdict

    def finish(self) -> Report:
        if self.session is None:
            raise InvalidArgument("Inspect stream closed before its first frame")
        report = self.session.report()
        report.request_id, report.trace_id = uuid.uuid4().hex, Tracing.trace_id(self.span)
        self.done = True
        self.service._finished(report)
        Tracing.finish(self.span, report, outcome_of(report))
        self.service.evidence.submit(report, None, self.session.snapshots(), None, "inspect")
        return report

    def ended(self, outcome: Outcome) -> None:
        if self.session is not None and not self.done:
            self.done = True
            self.service._count(self.session.dep.name, outcome)
            Tracing.finish(self.span, None, outcome)


def deployment_labels(settings: Settings) -> list[DeploymentLabels]:
    return [
        DeploymentLabels(
            d.name, d.family, d.variant, d.baseline or "", tuple((a.name, a.scale) for a in d.adapters)
        )
        for d in settings.deployments
    ]
