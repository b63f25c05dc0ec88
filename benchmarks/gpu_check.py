"""One GPU check: every performance question that needs a GPU, answered in one short run.

    python -P benchmarks/gpu_check.py --out benchmarks/gpu-check.json          # on a GPU, <= 8 minutes
    python -P benchmarks/gpu_check.py --smoke --out r.json                     # any CPU, a few minutes

Writes the JSON (one key per section), a Markdown table next to it (same name, .md) and, unless
--smoke, one row per section to benchmarks/results.csv with device, commit and date. Sections:

- device: GPU name, capability, driver / CUDA / torch / triton versions.
- kernel_correctness: the Triton kernel against the float64 oracle for every input kind (fp32, bf16,
  fp16, fp8 e4m3 / e5m2, packed int4) at 64, 96, 128 squared, batch 1 and 8, with the interpreter
  tests' tolerance (kernels.stats.oracle_tolerance); a launch failure is recorded with its message.
- launches_per_step: kernel launches (CUDA) or operator calls (CPU) of one guarded step, split into
  the statistics and the detectors (torch.profiler).
- kernel_vs_bandwidth_floor: the statistics' time against the bytes they read divided by the device's
  measured copy bandwidth.
- guard_overhead: bare vs guarded denoising steps of real-width random-init SD3.5-medium-like
  (24 heads x 64, q/k RMS-norm, a dual-attention block) and FLUX.1-dev-like (24 x 128, guidance
  embedding) transformers at 1024 x 1024 in bf16, built at depth 1 and 2. The depth-2 minus depth-1
  step time is one layer's; full depth = the depth-1 time + (layers - 1) x that (SD3.5-medium 24
  blocks; FLUX.1 19 double + 38 single, a single block counted as half a double one). The guard's cost
  per step does not depend on depth. Overhead = guard / extrapolated step, with a 95% bootstrap
  interval over repeated pairs; the attention probes' share apart.
- side_stream_overlap: the guard on a CUDA side stream overlapping the next step vs synchronous.
- batching: 8 latents at once vs 8 one after another, for the bare step and for the guard.
- inspect: Inspect's added latency per step with device-resident latents (the copy out included),
  against a `latentguard serve` process on loopback.
- canary_tolerance: tiny-sd3's canary divergence between batch 1 and batch 8 and between two runs,
  against the configured tolerance.
- quantized: the FP8 and 4-bit weight paths (torchao float8 and bitsandbytes NF4 on CUDA; quanto
  qfloat8 / qint4 on CPU) on the reduced SD3.5-like model: step time and memory against the 16-bit
  one, the x0_hat divergence `latentguard ab` reports, and the statistics on their latents.

--smoke runs every section on CPU at small sizes (the kernel in the Triton interpreter) so that the
code cannot rot; a section that needs CUDA records "skipped: no CUDA" and why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernel runs on CPU tensors in the interpreter
warnings.filterwarnings("ignore")
# `python -P` keeps the repository root off sys.path (its kernels/ would shadow Hugging Face's
# `kernels` package); this folder, which has no such name, goes on it for the benchmark helpers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_record import append_row, device_name  # noqa: E402

from latentguard.detectors import RequestGuard  # noqa: E402
from latentguard.kernels import pack_int4, trajectory_stats, unpack_int4  # noqa: E402
from latentguard.kernels.oracle import trajectory_stats_oracle  # noqa: E402
from latentguard.kernels.stats import LATENT_FIELDS, oracle_tolerance  # noqa: E402

HERE = Path(__file__).parent
DEVICE = "cuda" if CUDA else "cpu"
NO_CUDA = "skipped: no CUDA (this section measures a CUDA-only behaviour)"
Section = dict[str, Any]


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call, synchronised on CUDA; one warm-up call first."""
    fn()
    out = []
    for _ in range(repeats):
        if CUDA:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if CUDA:
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def bootstrap_ci(values: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the median."""
    import numpy as np
    import scipy.stats

    if len(set(values)) < 2:
        return values[0], values[0]
    ci = scipy.stats.bootstrap(
        (np.array(values),), np.median, confidence_level=0.95, method="percentile", random_state=seed
    )
    return float(ci.confidence_interval.low), float(ci.confidence_interval.high)


def latent_like(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Smooth structure plus fine noise and an offset, like a half-denoised latent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.randn(shape, generator=g), 3, 1, 1) * 2
    return x + 0.1 * torch.randn(shape, generator=g) + 0.3


# --- device ---------------------------------------------------------------------------------------


def section_device() -> Section:
    import triton

    out: Section = {
        "name": device_name(DEVICE),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    if CUDA:
        out["capability"] = "sm_{}{}".format(*torch.cuda.get_device_capability())
        out["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:
            smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            out["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError as exc:
            out["driver"] = f"unknown ({exc})"
    return out


# --- kernel correctness ---------------------------------------------------------------------------


def section_kernel_correctness(smoke: bool) -> Section:
    from latentguard.kernels.triton_stats import INPUT_KINDS

    # the interpreter runs one program per plane slowly: the smoke run checks every kind on 2 planes
    sides, batches, channels = ((24,), (1,), 2) if smoke else ((64, 96, 128), (1, 8), 16)
    rows, failures = [], 0
    for kind, dtype in INPUT_KINDS.items():
        for side in sides:
            for batch in batches:
                x = latent_like((batch, channels, side, side), seed=side + batch)
                q = pack_int4(x.to(DEVICE)) if dtype is None else x.to(DEVICE, dtype)
                read = (unpack_int4(q) if dtype is None else q.float()).cpu()
                row: Section = {"kind": kind, "shape": list(x.shape)}
                try:
                    got = trajectory_stats(q, backend="triton")
                except Exception as exc:  # a launch that fails is the finding: record it, go on
                    row.update(passed=False, error=f"{type(exc).__name__}: {exc}")
                    rows.append(row)
                    failures += 1
                    continue
                want = trajectory_stats_oracle(read.double())
                worst = {}
                for field in LATENT_FIELDS:
                    a, b = getattr(got, field).cpu().double(), getattr(want, field).double()
                    excess = ((a - b).abs() - oracle_tolerance(field) * (1 + b.abs())).max()
                    worst[field] = float(excess)
                row["passed"] = all(v <= 0 for v in worst.values())
                row["worst_field"] = max(worst, key=lambda f: worst[f])
                failures += not row["passed"]
                rows.append(row)
    return {
        "cases": len(rows),
        "failed": failures,
        "rows": rows,
        "backend": "triton" + ("" if CUDA else " (interpreter)"),
    }


# --- guard on a step: the detectors of the shipped tiny-sd3 profile, scoring any 16-channel latents --


def profiled_detectors() -> dict:
    """The shipped tiny-sd3 profile's latent detectors: per-channel envelopes over sigma work on 16
    channels of any size, so their cost on a 1024 x 1024 latent is measured here (not their verdicts)."""
    from latentguard.detectors import CalibrationProfile
    from latentguard.detectors.registry import latent_only
    from latentguard.server.pipelines.deployments import builtin_profile_path

    return latent_only(CalibrationProfile.load(builtin_profile_path("tiny-sd3")).build())


def guard_step(detectors: dict, latents: torch.Tensor, steps: int = 4) -> Callable[[], object]:
    sigmas = torch.linspace(1, 0, steps + 1).tolist()
    frames = [latents * (1 - 0.1 * i) for i in range(steps + 1)]

    def run() -> None:
        guard = RequestGuard(detectors, {}, frames[0], sigmas)
        for step in range(steps):
            guard.check(step, frames[step + 1])

    return run


def section_launches_per_step(side: int) -> Section:
    from torch.profiler import ProfilerActivity, profile

    detectors = profiled_detectors()
    x = latent_like((1, 16, side, side), seed=1).to(DEVICE, torch.bfloat16 if CUDA else torch.float32)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])

    def count(fn: Callable[[], object]) -> int:
        fn()  # warm: compiled kernels, cached envelopes
        with profile(activities=activities) as prof:
            fn()
            if CUDA:
                torch.cuda.synchronize()
        if CUDA:
            return sum(1 for e in prof.events() if e.device_type.name == "CUDA")
        return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)

    stats = lambda: trajectory_stats(x)  # noqa: E731
    guard = guard_step(detectors, x, steps=1)
    unit = "CUDA kernel launches" if CUDA else "top-level aten operator calls (CPU)"
    return {"unit": unit, "statistics": count(stats), "guarded_step": count(guard), "latents": list(x.shape)}


def section_kernel_vs_bandwidth_floor(side: int) -> Section:
    big = torch.empty(64 * 2**20 // 4, device=DEVICE)
    copy_s = statistics.median(timed(lambda: big.clone(), 10))
    bandwidth = 2 * big.numel() * 4 / copy_s  # read + write bytes per second
    rows = []
    for batch in (1, 8):
        x = latent_like((batch, 16, side, side), seed=batch).to(DEVICE, torch.bfloat16)
        ms = median_ms(timed(lambda x=x: trajectory_stats(x), 20))
        floor_ms = x.numel() * x.element_size() / bandwidth * 1e3
        rows.append({"shape": list(x.shape), "ms": ms, "floor_ms": floor_ms, "over_floor": ms / floor_ms})
    return {"copy_bandwidth_gb_s": bandwidth / 1e9, "rows": rows}


# --- real-width reduced-depth transformers ------------------------------------------------------------


def sd35_like(depth: int, smoke: bool) -> torch.nn.Module:
    """SD3.5-medium's block design (q/k RMS-norm, a dual-attention first block), random weights."""
    from diffusers import SD3Transformer2DModel

    heads, dim = (2, 16) if smoke else (24, 64)
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=depth,
        attention_head_dim=dim,
        num_attention_heads=heads,
        joint_attention_dim=64 if smoke else 4096,
        caption_projection_dim=heads * dim,
        pooled_projection_dim=32 if smoke else 2048,
        pos_embed_max_size=384,
        qk_norm="rms_norm",
        dual_attention_layers=(0,),
    )


def flux_like(depth: int, smoke: bool) -> torch.nn.Module:
    """FLUX.1-dev's block design (guidance embedding), random weights: depth double + depth single blocks."""
    from diffusers import FluxTransformer2DModel

    heads, dim = (2, 16) if smoke else (24, 128)
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=depth,
        num_single_layers=depth,
        attention_head_dim=dim,
        num_attention_heads=heads,
        joint_attention_dim=64 if smoke else 4096,
        pooled_projection_dim=32 if smoke else 768,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6) if smoke else (16, 56, 56),
    )


def step_fn(
    model: torch.nn.Module, family: str, latents: torch.Tensor, text_tokens: int
) -> Callable[[], Any]:
    """One transformer call plus the Euler update on [B, 16, H, W] latents (FLUX: packed 2 x 2)."""
    cfg = model.config
    b, c, h, w = latents.shape
    dt, dev = latents.dtype, latents.device
    text = torch.randn(b, text_tokens, cfg.joint_attention_dim, dtype=dt, device=dev)
    pooled = torch.randn(b, cfg.pooled_projection_dim, dtype=dt, device=dev)
    t = torch.full((b,), 0.5, dtype=dt, device=dev)
    if family == "sd3":

        def run() -> torch.Tensor:
            v = model(
                hidden_states=latents,
                encoder_hidden_states=text,
                pooled_projections=pooled,
                timestep=t * 1000,
            )
            return latents - 0.05 * v.sample

        return run
    packed = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    ids = torch.zeros(h // 2, w // 2, 3, device=dev)
    ids[..., 1] = torch.arange(h // 2, device=dev)[:, None]
    ids[..., 2] = torch.arange(w // 2, device=dev)[None, :]
    img_ids, txt_ids = ids.reshape(-1, 3), torch.zeros(text_tokens, 3, device=dev)
    guidance = torch.full((b,), 3.5, dtype=dt, device=dev)

    def run() -> torch.Tensor:
        v = model(
            hidden_states=packed,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=t,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
        )
        return packed - 0.05 * v.sample

    return run


FULL_DEPTH = {"sd3": 24, "flux": 19 + 38 / 2}  # SD3.5-medium blocks; FLUX.1 double + single / 2


def section_guard_overhead(smoke: bool) -> Section:
    side = 32 if smoke else 128
    dt = torch.bfloat16 if CUDA else torch.float32
    repeats = 3 if smoke or not CUDA else 15  # a real-width step takes seconds on a CPU
    detectors = profiled_detectors()
    out: Section = {
        "resolution": side * 8,
        "dtype": str(dt).removeprefix("torch."),
        "extrapolation": FULL_DEPTH,
    }
    for family, build in (("sd3", sd35_like), ("flux", flux_like)):
        latents = latent_like((1, 16, side, side), seed=3).to(DEVICE, dt)
        step_s = {}
        with torch.inference_mode():
            for depth in (1, 2):
                model = build(depth, smoke).to(DEVICE, dt).eval()
                step_s[depth] = timed(step_fn(model, family, latents, 16 if smoke else 256), repeats)
                del model
            guard = timed(guard_step(detectors, latents, steps=1), repeats)
        per_layer = max(statistics.median(step_s[2]) - statistics.median(step_s[1]), 0.0)
        full_s = statistics.median(step_s[1]) + (FULL_DEPTH[family] - 1) * per_layer
        ratios = [100 * g / full_s for g in guard]
        low, high = bootstrap_ci(ratios)
        out[family] = {
            "peak_memory_mb": peak_memory_mb(),
            "step_ms_depth1": median_ms(step_s[1]),
            "step_ms_depth2": median_ms(step_s[2]),
            "full_depth_step_ms": full_s * 1e3,
            "guard_ms_per_step": median_ms(guard),
            "guard_overhead_pct": statistics.median(ratios),
            "guard_overhead_ci": [low, high],
        }
    out["probe_ms_per_step"] = probe_cost(smoke, side, dt)
    return out


def peak_memory_mb() -> float:
    """CUDA: the allocator's peak since the last reset (reset here); CPU: the process's peak RSS."""
    if CUDA:
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def probe_cost(smoke: bool, side: int, dt: torch.dtype) -> float:
    """The attention probes on the depth-2 SD3.5-like model (both blocks probed): probed minus plain step."""
    from types import SimpleNamespace

    from latentguard.server.pipelines import attention_probes

    latents = latent_like((1, 16, side, side), seed=4).to(DEVICE, dt)
    with torch.inference_mode():
        model = sd35_like(2, smoke).to(DEVICE, dt).eval()
        run = step_fn(model, "sd3", latents, 16 if smoke else 256)
        plain = timed(run, 3 if smoke or not CUDA else 10)
        layers = attention_probes.install(SimpleNamespace(transformer=model), "sd3", None)

        def probed() -> None:
            rec = attention_probes.Recording(1, layers, 64)
            with attention_probes.recording(rec):
                run()
            rec.take()

        with_probes = timed(probed, 3 if smoke or not CUDA else 10)
    return median_ms(with_probes) - median_ms(plain)


def section_side_stream_overlap(smoke: bool) -> Section:
    if not CUDA:
        return {"skipped": NO_CUDA}
    side, dt = 128, torch.bfloat16
    detectors = profiled_detectors()
    latents = latent_like((1, 16, side, side), seed=5).to(DEVICE, dt)
    with torch.inference_mode():
        model = sd35_like(2, smoke).to(DEVICE, dt).eval()
        step = step_fn(model, "sd3", latents, 256)
        guard = guard_step(detectors, latents, steps=1)
        side_stream = torch.cuda.Stream()

        def synchronous() -> None:
            for _ in range(4):
                step()
                guard()

        def overlapped() -> None:
            for _ in range(4):
                step()
                side_stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side_stream):
                    guard()
            torch.cuda.current_stream().wait_stream(side_stream)

        sync_ms, over_ms = median_ms(timed(synchronous, 10)), median_ms(timed(overlapped, 10))
    return {
        "synchronous_ms_per_4_steps": sync_ms,
        "side_stream_ms_per_4_steps": over_ms,
        "saved_pct": 100 * (1 - over_ms / sync_ms),
    }


def section_batching(smoke: bool) -> Section:
    side = 32 if smoke else 128
    dt = torch.bfloat16 if CUDA else torch.float32
    detectors = profiled_detectors()
    one, eight = (latent_like((n, 16, side, side), seed=6).to(DEVICE, dt) for n in (1, 8))
    out: Section = {}
    with torch.inference_mode():
        model = sd35_like(1, smoke).to(DEVICE, dt).eval()
        for name, single, batched in (
            ("bare_step", step_fn(model, "sd3", one, 16), step_fn(model, "sd3", eight, 16)),
            ("guard", guard_step(detectors, one, 1), guard_step(detectors, eight, 1)),
        ):
            seq = median_ms(timed(lambda single=single: [single() for _ in range(8)], 3))
            together = median_ms(timed(batched, 3))
            out[name] = {"eight_sequential_ms": seq, "eight_batched_ms": together, "speedup": seq / together}
    return out


def section_inspect(smoke: bool) -> Section:
    import queue

    from bench_service import serve

    from latentguard.server.rpc.client import tensor_frame

    side, steps, sessions = (32, 4, 2) if smoke else (128, 20, 5)
    sigmas = torch.linspace(1, 0, steps + 1).tolist()
    frames = [latent_like((1, 16, side, side), seed=s).to(DEVICE, torch.bfloat16) for s in range(steps + 1)]
    latencies = []
    with serve("tiny-sd3", {"warmup": False}) as (stub, _):
        for _ in range(sessions):
            q: queue.Queue = queue.Queue()
            q.put(tensor_frame(frames[0].cpu(), -1, deployment="tiny-sd3", sigmas=sigmas))
            responses = stub.Inspect(iter(q.get, None), timeout=120)
            for step in range(steps):
                t = time.perf_counter()
                q.put(tensor_frame(frames[step + 1].cpu(), step))  # the copy out of device memory counts
                next(responses)
                latencies.append(time.perf_counter() - t)
            q.put(None)
            list(responses)
    latencies.sort()
    return {
        "latents": [1, 16, side, side],
        "steps": len(latencies),
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)] * 1e3,
    }


def section_canary_tolerance(smoke: bool) -> Section:
    from latentguard.server.config import Settings
    from latentguard.server.pipelines.canaries import POOL, relative_l2, step_features
    from latentguard.server.pipelines.deployments import load_deployment
    from latentguard.server.pipelines.runner import PipelineRunner

    settings = Settings(device=DEVICE)
    cfg = settings.deployment("tiny-sd3")
    canary = cfg.canaries.prompts[0]
    runner = PipelineRunner(load_deployment(cfg, DEVICE))
    steps = 4 if smoke else cfg.steps

    def run(batch: int):
        d = runner.denoise(
            [canary.prompt] * batch,
            [canary.seed + i for i in range(batch)],
            steps,
            cfg.height,
            cfg.width,
            cfg.guidance_scale,
            detectors={},
            policies={},
        )
        final = torch.nn.functional.avg_pool2d(d.latents.float().cpu(), POOL)[0]
        return step_features(d.guard.monitor.stacked())[0], final

    def divergence(a, b) -> float:
        import numpy as np

        return max(float(np.abs(a[0] - b[0]).max()), relative_l2(a[1], b[1]))

    first, second, in_batch = run(1), run(1), run(8)
    return {
        "tolerance": cfg.canaries.tolerance,
        "two_runs": divergence(first, second),
        "batch1_vs_batch8": divergence(first, in_batch),
        "within_tolerance": max(divergence(first, second), divergence(first, in_batch))
        <= cfg.canaries.tolerance,
    }


def section_quantized(smoke: bool) -> Section:
    side = 32 if smoke else 128
    dt = torch.bfloat16 if CUDA else torch.float32
    latents = latent_like((1, 16, side, side), seed=7).to(DEVICE, dt)
    out: Section = {"path": "torchao float8 / bitsandbytes nf4" if CUDA else "quanto qfloat8 / qint4 (CPU)"}
    with torch.inference_mode():
        base = sd35_like(2, smoke).to(DEVICE, dt).eval()
        reference = step_fn(base, "sd3", latents, 16)()
        base_ms = median_ms(timed(step_fn(base, "sd3", latents, 16), 3 if smoke else 10))
        base_mb = sum(t.untyped_storage().nbytes() for t in base.state_dict().values()) / 2**20
        out["16bit" if CUDA else "fp32"] = {"step_ms": base_ms, "weights_mb": base_mb}
        for variant in ("fp8", "4bit"):
            try:
                model = quantized_copy(variant, smoke, dt)
            except Exception as exc:  # a library missing or refusing this device: say which
                out[variant] = {"skipped": f"{type(exc).__name__}: {exc}"}
                continue
            run = step_fn(model, "sd3", latents, 16)
            got = run()
            stats = trajectory_stats(got.float())
            out[variant] = {
                "step_ms": median_ms(timed(run, 3 if smoke else 10)),
                "weights_mb": sum(t.untyped_storage().nbytes() for t in model.state_dict().values()) / 2**20,
                "x0_rel_l2_vs_base": float(
                    (got.float() - reference.float()).norm() / reference.float().norm()
                ),
                "stats_finite": bool(all(torch.isfinite(getattr(stats, f)).all() for f in ("mean", "var"))),
            }
            out[variant]["step_over_base"] = out[variant]["step_ms"] / base_ms
    return out


def quantized_copy(variant: str, smoke: bool, dt: torch.dtype) -> torch.nn.Module:
    model = sd35_like(2, smoke).to(DEVICE, dt).eval()
    if not CUDA:
        from latentguard.server.pipelines.quantization import quantize_transformer

        return quantize_transformer(model, {"fp8": "fp8", "4bit": "int4"}[variant])
    if variant == "fp8":
        from torchao.quantization import float8_weight_only, quantize_

        quantize_(model, float8_weight_only())
        return model
    import bitsandbytes as bnb  # NF4 linear layers, as diffusers' BitsAndBytesConfig(load_in_4bit) builds

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    child.bias is not None,
                    compute_dtype=dt,
                    quant_type="nf4",
                )
                q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, child_name, q.to(DEVICE))
    return model


# --- the run --------------------------------------------------------------------------------------


def markdown(results: Section) -> str:
    lines = [f"# GPU check: {results['device']['name']}\n", "| section | result |", "|---|---|"]
    for name, value in results.items():
        if name == "device":
            continue
        text = json.dumps(
            value if not isinstance(value, dict) else {k: v for k, v in value.items() if k != "rows"}
        )
        lines.append(f"| {name} | `{text[:400]}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every section on CPU at small sizes")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write (the .md goes next to it)")
    parser.add_argument("--only", default="", help="comma-separated sections to run (default: all)")
    args = parser.parse_args()
    side = 32 if args.smoke else 128
    sections: dict[str, Callable[[], Section]] = {
        "device": section_device,
        "kernel_correctness": lambda: section_kernel_correctness(args.smoke),
        "launches_per_step": lambda: section_launches_per_step(side),
        "kernel_vs_bandwidth_floor": lambda: section_kernel_vs_bandwidth_floor(side),
        "guard_overhead": lambda: section_guard_overhead(args.smoke),
        "side_stream_overlap": lambda: section_side_stream_overlap(args.smoke),
        "batching": lambda: section_batching(args.smoke),
        "inspect": lambda: section_inspect(args.smoke),
        "canary_tolerance": lambda: section_canary_tolerance(args.smoke),
        "quantized": lambda: section_quantized(args.smoke),
    }
    if args.only:
        unknown = set(args.only.split(",")) - set(sections)
        if unknown:
            parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(sections)}")
        sections = {k: v for k, v in sections.items() if k == "device" or k in args.only.split(",")}
    results: Section = {}
    t0 = time.perf_counter()
    for name, run in sections.items():
        t = time.perf_counter()
        print(f"[{time.perf_counter() - t0:6.1f} s] {name} ...", flush=True)
        try:
            results[name] = run()
        except Exception as exc:  # one broken section must not cost the others' device time
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["seconds"] = round(time.perf_counter() - t, 1)
    results["mode"] = {"smoke": args.smoke, "total_seconds": round(time.perf_counter() - t0, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    if not args.smoke:
        flat = {f"gpu_check_{k}": json.dumps(v, default=str) for k, v in results.items() if k != "device"}
        append_row(HERE / "gpu_check.csv", flat, device=DEVICE)
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
