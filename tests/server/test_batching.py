"""Dynamic batching: a batched request gets what it would get alone; elements leave a batch on their own.

"What it would get alone" is up to float rounding: CPU matmuls do not give bit-identical results
at another batch size (measured: latents within ~7e-5, images within one 8-bit level on <0.5% of
the pixels), so images are compared to one level and reports by verdict, steps and flagged set.
"""

import copy
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from latentguard.detectors.policy import Action, DetectorPolicy
from latentguard.server.core.batching import Batcher
from latentguard.server.pipelines.requests import GenerateRequest, resolve
from latentguard.server.pipelines.runner import Element, PipelineRunner, batch_key

PROMPTS = [
    "a red circle on a blue background",
    "two yellow squares on a white background",
    "a green triangle at the top left on a black background",
    "a purple square on an orange background",
]


def requests(dep, settings, n=4, **kw):
    return [
        resolve(GenerateRequest(dep.name, PROMPTS[i % len(PROMPTS)], seed=10 + i, **kw), dep, settings.limits)
        for i in range(n)
    ]


def pixels(image):
    return np.asarray(image).astype(int)


def assert_same_as_alone(batched, alone):
    assert (batched.report.verdict, batched.report.steps_run) == (
        alone.report.verdict,
        alone.report.steps_run,
    )
    assert batched.report.aborted_at_step == alone.report.aborted_at_step
    assert batched.report.flagged_detectors == alone.report.flagged_detectors
    assert batched.report.seed == alone.report.seed
    for b, a in zip(batched.report.detectors, alone.report.detectors, strict=True):
        assert b.name == a.name and b.score == pytest.approx(a.score, abs=0.02), b.name
    if alone.image is None:
        assert batched.image is None
    else:
        diff = np.abs(pixels(batched.image) - pixels(alone.image))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_a_batched_request_gets_the_image_and_report_it_gets_alone(name, deployments, settings):
    dep = deployments[name]
    runner = PipelineRunner(dep)
    reqs = requests(dep, settings)
    batched = runner.generate_batch([Element(r) for r in reqs])
    for req, got in zip(reqs, batched, strict=True):
        assert_same_as_alone(got, runner.generate(req))
    # and the batch is not four copies of one request
    assert np.abs(pixels(batched[0].image) - pixels(batched[1].image)).mean() > 3


def abort_one(dep, runner, reqs):
    """A copy of `dep` where exactly one of `reqs` crosses an abort threshold (picked from their
    reports alone: halfway between the highest request's peak score and the next one's)."""
    peaks = [{d.name: d.score for d in runner.generate(r).report.detectors} for r in reqs]
    for name, det in dep.detectors.items():
        if name == "onnx_classifier":
            continue
        order = sorted(range(len(reqs)), key=lambda i: peaks[i][name])
        top, second = peaks[order[-1]][name], peaks[order[-2]][name]
        if top - second > 0.5:
            strict = copy.deepcopy(det)
            strict.threshold = (top + second) / 2
            detectors = {**dep.detectors, name: strict}
            policies = {**dep.policies, name: DetectorPolicy(action=Action.ABORT)}
            return dataclasses.replace(dep, detectors=detectors, policies=policies), order[-1]
    pytest.fail("no detector separates one of these requests from the others: pick other prompts")


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_an_element_that_aborts_is_answered_at_its_step_and_the_others_finish_unchanged(
    name, deployments, settings
):
    base = deployments[name]
    reqs = requests(base, settings)
    dep, victim = abort_one(base, PipelineRunner(base), reqs)
    runner = PipelineRunner(dep)
    answered: list[int] = []
    elements = [Element(r, answer=lambda res, i=i: answered.append(i)) for i, r in enumerate(reqs)]
    batched = runner.generate_batch(elements)
    alone = [runner.generate(r) for r in reqs]
    assert alone[victim].report.verdict == "abort" and alone[victim].image is None
    assert alone[victim].report.steps_run < alone[victim].report.steps_requested or (
        alone[victim].report.aborted_at_step == alone[victim].report.steps_requested - 1
    )
    assert answered[0] == victim and sorted(answered) == list(range(len(reqs)))  # answered first
    for got, want in zip(batched, alone, strict=True):
        assert_same_as_alone(got, want)
    assert sum(r.report.verdict == "abort" for r in batched) == 1


def test_a_stopped_element_leaves_at_its_step_and_the_others_run_to_the_end(deployments, settings):
    dep = deployments["tiny-flux"]
    reqs = requests(dep, settings, n=3)
    seen = {i: 0 for i in range(3)}
    stop_after = 3

    def hook(i):
        def on_step(verdict):
            seen[i] += 1

        return on_step

    elements = [Element(r, on_step=hook(i)) for i, r in enumerate(reqs)]
    elements[1].should_stop = lambda: seen[1] >= stop_after  # its caller went away after 3 steps
    results = PipelineRunner(dep).generate_batch(elements)
    assert results[1].report.steps_run == stop_after and results[1].image is None
    assert seen[1] == stop_after  # no step events after it left
    for i in (0, 2):
        assert results[i].report.steps_run == reqs[i].steps and results[i].image is not None
        assert seen[i] == reqs[i].steps


def test_only_requests_of_one_batch_key_share_a_call(deployments, settings):
    dep = deployments["tiny-sd3"]
    plain = requests(dep, settings, n=1)[0]
    drilled = resolve(GenerateRequest(dep.name, "a fox", drill="blur:step=3"), dep, settings.limits)
    other_size = resolve(GenerateRequest(dep.name, "a fox", width=128), dep, settings.limits)
    assert batch_key(drilled) is None and batch_key(plain) != batch_key(other_size)
    with pytest.raises(ValueError, match="cannot share"):
        PipelineRunner(dep).generate_batch([Element(plain), Element(other_size)])
    with pytest.raises(ValueError, match="cannot share"):
        PipelineRunner(dep).generate_batch([Element(drilled), Element(drilled)])


class CountingRunner:
    """Records the batches a Batcher forms; answers each element with its prompt."""

    def __init__(self, gate: threading.Event | None = None):
        self.batches: list[list[str]] = []
        self.gate = gate
        self.entered = threading.Event()

    def generate_batch(self, elements):
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append([e.request.prompt for e in elements])
        for e in elements:
            e.answer(e.request.prompt)
        return [e.request.prompt for e in elements]


def test_the_batcher_groups_waiting_requests_by_key_up_to_the_size_limit(deployments, settings):
    dep = deployments["tiny-sd3"]
    gate = threading.Event()
    runner = CountingRunner(gate)
    executor = ThreadPoolExecutor(1)
    batcher = Batcher(runner, executor, max_batch_size=3, max_batch_delay_ms=0)  # type: ignore[arg-type]
    first = batcher.submit(Element(requests(dep, settings, n=1)[0]))  # runs alone, holds the worker
    assert runner.entered.wait(5)
    same = [dataclasses.replace(r, prompt=f"p{i}") for i, r in enumerate(requests(dep, settings, n=4))]
    other = resolve(GenerateRequest(dep.name, "q", steps=3), dep, settings.limits)
    futures = [batcher.submit(Element(r)) for r in [*same[:2], other, *same[2:]]]
    gate.set()  # the four queued while the first ran: taken without waiting, grouped by key
    assert [f.result(10) for f in futures] == ["p0", "p1", "q", "p2", "p3"]
    assert first.result(10) == PROMPTS[0]
    assert runner.batches == [[PROMPTS[0]], ["p0", "p1", "p2"], ["q"], ["p3"]]
    executor.shutdown()


def test_the_batcher_waits_for_company_only_up_to_its_delay(deployments, settings):
    dep = deployments["tiny-sd3"]
    runner = CountingRunner()
    executor = ThreadPoolExecutor(1)
    batcher = Batcher(runner, executor, max_batch_size=4, max_batch_delay_ms=10_000)  # type: ignore[arg-type]
    reqs = [dataclasses.replace(r, prompt=f"p{i}") for i, r in enumerate(requests(dep, settings, n=4))]
    futures = [batcher.submit(Element(r)) for r in reqs]  # a full batch does not wait out the delay
    assert [f.result(5) for f in futures] == ["p0", "p1", "p2", "p3"]
    assert runner.batches == [["p0", "p1", "p2", "p3"]]
    executor.shutdown()


def test_requests_still_waiting_at_shutdown_are_answered(deployments, settings):
    from latentguard.server.errors import Unavailable

    dep = deployments["tiny-sd3"]
    gate = threading.Event()
    executor = ThreadPoolExecutor(1)
    runner = CountingRunner(gate)
    batcher = Batcher(runner, executor, max_batch_size=1, max_batch_delay_ms=0)  # type: ignore[arg-type]
    first, second = requests(dep, settings, n=2)
    running = batcher.submit(Element(first))
    assert runner.entered.wait(5)
    waiting = batcher.submit(Element(second))
    batcher.close(Unavailable("shutting down"))
    gate.set()
    assert running.result(5) == PROMPTS[0]
    with pytest.raises(Unavailable):
        waiting.result(5)
    executor.shutdown()


def test_concurrent_grpc_requests_share_pipeline_calls_and_each_is_answered_and_counted():
    from latentguard.server.rpc.client import channel
    from latentguard.v1 import guardrail_pb2 as pb
    from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

    from .grpc_harness import ServerThread, make_settings, scrape, value

    settings = make_settings()
    flux = next(d for d in settings.deployments if d.name == "tiny-flux")
    settings.deployments[settings.deployments.index(flux)] = flux.model_copy(
        update={"max_batch_delay_ms": 500}
    )
    srv = ServerThread(settings).start()
    try:
        stub = pb_grpc.GuardrailStub(channel(srv.target))
        labels = {"deployment": "tiny-flux", "family": "flux", "variant": "fp32"}
        before = scrape(srv)
        calls = [
            stub.Generate.future(pb.GenerateRequest(deployment="tiny-flux", prompt=p, seed=i), timeout=60)
            for i, p in enumerate(PROMPTS)
        ]
        replies = [c.result() for c in calls]
        after = scrape(srv)
    finally:
        srv.stop()
    assert [r.report.seed for r in replies] == [0, 1, 2, 3] and all(r.image_png for r in replies)
    counted = sum(
        value(after, "latentguard_requests_total", **labels, outcome=o)
        - value(before, "latentguard_requests_total", **labels, outcome=o)
        for o in ("ok", "flagged", "aborted")
    )
    assert counted == 4
    batches = value(after, "latentguard_batch_size_count", deployment="tiny-flux") - value(
        before, "latentguard_batch_size_count", deployment="tiny-flux"
    )
    requests_in_batches = value(after, "latentguard_batch_size_sum", deployment="tiny-flux") - value(
        before, "latentguard_batch_size_sum", deployment="tiny-flux"
    )
    assert requests_in_batches == 4 and batches < 4  # some shared a call


def test_on_cpu_every_deployment_computes_on_one_thread_and_on_a_gpu_each_on_its_own(settings):
    from latentguard.server.core.threads import compute_threads

    on_cpu = compute_threads(settings)
    assert settings.device == "cpu" and on_cpu("tiny-sd3") is on_cpu("tiny-flux")
    on_gpu = compute_threads(settings.model_copy(update={"device": "cuda"}))
    a, b = on_gpu("tiny-sd3"), on_gpu("tiny-flux")
    assert a is not b
    for executor in (on_cpu("tiny-sd3"), a, b):
        executor.shutdown()
