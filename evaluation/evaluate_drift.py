"""Fleet-drift evaluation: false alarms on an unchanged model, and what changes of the model are
caught, after how many requests, while each request still looks normal.

    python evaluation/evaluate_drift.py [--deployments tiny-sd3,tiny-flux] [--benign-runs 2048]
        [--changed-runs 512] [--out drift]

Everything runs on fresh prompts of the scene grammar's "evaluation" split with seeds from 2000000
(the drift references were built on "calibration" prompts, seeds from 1000000), against the shipped
drift references and profiles, exactly as the server scores them (detectors/drift.py): a window of
the last 64 comparable requests, scored every 16 new ones; an alarm is any method above 1.

- False alarms (unchanged model): the share of alarmed windows among windows resampled from the
  benign runs, with its Clopper-Pearson 95% interval; the same over the non-overlapping windows and
  over the server's own stream (every 16 requests) of the benign runs in order; the MMD
  permutation p-value's calibration (share below 0.05 and 0.01 over resampled windows).
- Canaries: the shipped canaries' divergence on the unchanged model (3 rounds; tolerance 1e-3) and
  on each changed one (one round: 3 requests' worth of compute, whenever the server is idle).
- Each change: requests after the change until the first alarm when the stream switches from
  benign to changed traffic (window full of benign requests before; 40 random orders: median and
  worst), the share of resampled all-changed windows that alarm (per method and any), the per-request
  flag rate under the shipped profile (is it visible per request?), and the image PSNR of the
  changed model against the unchanged one on the same prompts and seeds (how big the change is).
Writes evaluation/<out>.md and evaluation/<out>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from latentguard.detectors.calibration import clopper_pearson
from latentguard.detectors.drift import EVERY, METHODS, DriftReference, Window, request_summary
from latentguard.server.config import AdapterConfig, Settings
from latentguard.server.offline import scenes
from latentguard.server.offline.ab_stats import psnr
from latentguard.server.offline.collapse import with_one_prompt
from latentguard.server.offline.lora import random_lora
from latentguard.server.offline.trajectories import LocalCollector, RunCount, run_grid
from latentguard.server.pipelines.canaries import CanarySet, run_round
from latentguard.server.pipelines.deployments import Deployment, load_deployment
from latentguard.server.pipelines.runner import PipelineRunner

HERE = Path(__file__).parent
SEED_BASE = 2_000_000
STREAM_ORDERS = 40
PSNR_PAIRS = 8
ONE_PROMPT = "one large orange circle at the top left on a pink background"  # a calibration caption


def summaries(
    dep: Deployment, prompts: list[str], first_seed: int, progress: RunCount
) -> tuple[np.ndarray, np.ndarray]:
    """(drift summaries [N, D], per-request any-detector flag [N]) of one run per prompt."""
    collected = LocalCollector(dep).collect(run_grid(prompts, 1, first_seed=first_seed), progress=progress)
    detectors = dep.detectors
    flagged = torch.zeros(len(prompts), dtype=torch.bool)
    for det in detectors.values():
        scores = torch.nan_to_num(det.trajectory_scores(collected.stats, collected.sigmas), nan=-1e9)
        flagged |= (scores > det.threshold).any(dim=1)
    return request_summary(collected.stats), flagged.numpy()


def alarms(ref: DriftReference, windows: list[np.ndarray]) -> np.ndarray:
    """[windows, methods] normalised scores."""
    return np.array([[ref.scores(w)[m] for m in METHODS] for w in windows])


def resampled(runs: np.ndarray, size: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [runs[rng.choice(len(runs), size, replace=False)] for _ in range(count)]


def stream_alarms(ref: DriftReference, runs: np.ndarray, start_after: int = 0) -> list[int]:
    """The server's cadence (detectors/drift.py `Window`) over `runs` in order: 1-based indices
    (counted from `start_after`) of the requests at which a scored window alarmed."""
    window, out = Window(ref.window), []
    for i, summary in enumerate(runs):
        if window.add(summary) and max(ref.scores(window.take()).values()) > 1:
            out.append(i + 1 - start_after)
    return out


def canary_divergence(dep: Deployment, reference: CanarySet, tolerance: float) -> float:
    """The largest divergence of the recorded canaries run on `dep` (one round)."""
    report = run_round(PipelineRunner(dep), reference, tolerance)
    assert report is not None
    return report.divergence


def image_psnr(base: Deployment, changed: Deployment, prompts: list[str]) -> float:
    seeds = list(range(SEED_BASE, SEED_BASE + len(prompts)))
    images = []
    for dep in (base, changed):
        latents = PipelineRunner(dep).denoise_at_defaults(prompts, seeds).latents
        images.append(dep.family.decode(dep.pipe, latents))
    return float(np.mean([psnr(np.asarray(a), np.asarray(b)) for a, b in zip(*images, strict=True)]))


def with_scheduler_shift(dep: Deployment, factor: float) -> Deployment:
    changed = copy.copy(dep)
    changed.pipe = copy.copy(dep.pipe)
    shift = dep.pipe.scheduler.config.shift * factor
    changed.pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        dep.pipe.scheduler.config, shift=shift
    )
    return changed


def with_weight_noise(dep: Deployment, relative: float, seed: int = 0) -> Deployment:
    """Every weight of the denoiser moved by Gaussian noise of `relative` times its tensor's std (a
    stand-in for a silently swapped or re-trained checkpoint)."""
    changed = copy.copy(dep)
    changed.pipe = copy.copy(dep.pipe)
    transformer = copy.deepcopy(dep.pipe.transformer)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in transformer.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=generator) * p.float().std() * relative)
    changed.pipe.transformer = transformer
    return changed


def changes(
    settings: Settings, base: Deployment, workdir: Path
) -> list[tuple[str, Callable[[], Deployment]]]:
    cfg = base.config
    lora = random_lora(base, workdir / cfg.name, rank=4, std=0.05, seed=1)

    def adapted(scale: float) -> Callable[[], Deployment]:
        adapter = AdapterConfig(name="drift-eval", path=str(lora), scale=scale)
        return lambda: _with_base_references(
            load_deployment(cfg.model_copy(update={"name": f"{cfg.name}+lora", "adapters": [adapter]})), base
        )

    rows: list[tuple[str, Callable[[], Deployment]]] = [
        (f"LoRA rank 4, scale {s}", adapted(s)) for s in (0.1, 0.25, 0.5, 1.0)
    ]
    rows += [
        ("scheduler shift x1.5", lambda: with_scheduler_shift(base, 1.5)),
        ("weights + 1% noise", lambda: with_weight_noise(base, 0.01)),
        # diversity collapse (seed 000): every request drawn as one prompt; only vendi is meant for it
        ("prompt ignored: one prompt for all", lambda: with_one_prompt(base, ONE_PROMPT)),
    ]
    for variant in ("fp8", "int4"):
        quantized = [d for d in settings.deployments if d.baseline == cfg.name and d.variant == variant]
        if quantized:
            rows.append(
                (
                    f"dtype change to {variant}",
                    lambda q=quantized[0]: _with_base_references(load_deployment(q), base),
                )
            )
    return rows


def _with_base_references(dep: Deployment, base: Deployment) -> Deployment:
    """The changed model, judged by the unchanged deployment's profile and drift reference (a change
    nobody recalibrated for)."""
    dep.profile, dep.detectors, dep.drift = base.profile, base.detectors, base.drift
    return dep


def evaluate(name: str, benign_runs: int, changed_runs: int, workdir: Path) -> dict:
    settings = Settings()
    base = load_deployment(settings.deployment(name))
    ref = base.drift
    if ref is None:
        raise SystemExit(f"{name} has no drift reference (make profiles)")
    if base.canaries is None:
        raise SystemExit(f"{name} has no canary reference (make profiles)")
    if min(benign_runs, changed_runs) < ref.window:
        raise SystemExit(f"--benign-runs and --changed-runs must be at least the drift window ({ref.window})")
    tolerance = base.config.canaries.tolerance
    rng = np.random.default_rng(0)
    prompts = scenes.prompts(benign_runs, "evaluation", seed=11)
    rows = changes(settings, base, workdir)
    counted = RunCount(name, benign_runs + min(changed_runs, benign_runs) * len(rows))
    benign, benign_flags = summaries(base, prompts, SEED_BASE, counted)
    null = alarms(ref, resampled(benign, ref.window, 5000, rng))
    any_null = (null > 1).any(axis=1)
    disjoint = alarms(
        ref, [benign[i : i + ref.window] for i in range(0, len(benign) - ref.window + 1, ref.window)]
    )
    stream = stream_alarms(ref, benign)
    pvalues = np.array(
        [ref.mmd_pvalue(w, seed=i) for i, w in enumerate(resampled(benign, ref.window, 200, rng))]
    )
    result = {
        "deployment": name,
        "window": ref.window,
        "every": EVERY,
        "benign_runs": len(benign),
        "benign_flag_rate": float(benign_flags.mean()),
        "false_alarm_resampled": float(any_null.mean()),
        "false_alarm_resampled_ci": clopper_pearson(int(any_null.sum()), len(any_null)),
        "resampled_windows": len(any_null),
        "false_alarm_per_method": {m: float((null[:, j] > 1).mean()) for j, m in enumerate(METHODS)},
        "disjoint_windows": len(disjoint),
        "disjoint_alarms": int((disjoint > 1).any(axis=1).sum()),
        "stream_evaluations": (len(benign) - ref.window) // EVERY + 1,
        "stream_alarms": len(stream),
        "pvalue_below_0.05": float((pvalues < 0.05).mean()),
        "pvalue_below_0.01": float((pvalues < 0.01).mean()),
        "canary_tolerance": tolerance,
        "canary_divergence_unchanged": [canary_divergence(base, base.canaries, tolerance) for _ in range(3)],
        "changes": [],
    }
    psnr_prompts = prompts[:PSNR_PAIRS]
    for label, make in rows:
        changed = make()
        drifted, flags = summaries(changed, prompts[:changed_runs], SEED_BASE + benign_runs, counted)
        power = alarms(ref, resampled(drifted, ref.window, 1000, rng)) > 1
        delays = []
        for order in range(STREAM_ORDERS):
            r = np.random.default_rng(order)
            before = benign[r.choice(len(benign), ref.window, replace=False)]
            after = drifted[r.permutation(len(drifted))]
            hits = [i for i in stream_alarms(ref, np.concatenate([before, after]), ref.window) if i > 0]
            delays.append(hits[0] if hits else None)
        found = [d for d in delays if d is not None]
        row = {
            "change": label,
            "runs": len(drifted),
            "flag_rate": float(flags.mean()),
            "image_psnr_db": image_psnr(base, changed, psnr_prompts),
            "canary_divergence": canary_divergence(changed, base.canaries, tolerance),
            "window_alarm_rate": float(power.any(axis=1).mean()),
            "window_alarm_per_method": {m: float(power[:, j].mean()) for j, m in enumerate(METHODS)},
            "streams_detected": len(found),
            "streams": STREAM_ORDERS,
            "delay_median": float(np.median(found)) if found else None,
            "delay_max": max(found) if len(found) == STREAM_ORDERS else None,
        }
        print(json.dumps(row), flush=True)
        result["changes"].append(row)
    return result


def fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def to_markdown(results: list[dict]) -> str:
    lines = [
        "# Fleet drift: evaluation",
        "",
        "Generated by `python evaluation/evaluate_drift.py` (`make eval-drift`). Fresh evaluation prompts "
        "and seeds; the shipped drift references and profiles. Window 64 requests, scored every 16; "
        "alarm: any of kl / angle / mmd / shift / vendi above 1. Canaries: tolerance 1e-3.",
        "",
        "## False alarms on an unchanged model",
        "",
        "| deployment | benign runs | resampled windows: alarm rate [95% CI] | "
        "kl / angle / mmd / shift / vendi | disjoint windows: alarms | server stream: alarms / evaluations | "
        "MMD p < 0.05 / < 0.01 | "
        "per-request flag rate | canary divergence (3 rounds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lo, hi = r["false_alarm_resampled_ci"]
        per = " / ".join(fmt(r["false_alarm_per_method"][m], ".4f") for m in METHODS)
        lines.append(
            f"| {r['deployment']} | {r['benign_runs']} | "
            f"{r['false_alarm_resampled']:.4f} [{lo:.4f}, {hi:.4f}] of {r['resampled_windows']} | {per} | "
            f"{r['disjoint_alarms']} / {r['disjoint_windows']} | "
            f"{r['stream_alarms']} / {r['stream_evaluations']} | {r['pvalue_below_0.05']:.3f} / "
            f"{r['pvalue_below_0.01']:.3f} | {r['benign_flag_rate']:.4f} | "
            f"{', '.join(format(d, '.2g') for d in r['canary_divergence_unchanged'])} |"
        )
    lines += [
        "",
        "## Changes of the model",
        "",
        "Requests after the change until the first alarm (stream: a window of benign requests, then "
        "the changed model's requests in 40 random orders); the share of all-changed windows that "
        "alarm; the per-request flag rate of the changed model under the unchanged profile; image PSNR "
        "against the unchanged model (same prompts and seeds).",
        "",
        "| deployment | change | image PSNR (dB) | per-request flag rate | canary divergence | window alarm "
        "rate (kl / angle / mmd / shift / vendi) | streams detected | requests to alarm: median / worst |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for c in r["changes"]:
            per = " / ".join(fmt(c["window_alarm_per_method"][m], ".2f") for m in METHODS)
            lines.append(
                f"| {r['deployment']} | {c['change']} | {c['image_psnr_db']:.1f} | {c['flag_rate']:.3f} | "
                f"{c['canary_divergence']:.3g} | "
                f"{c['window_alarm_rate']:.3f} ({per}) | {c['streams_detected']} / {c['streams']} | "
                f"{fmt(c['delay_median'], '.0f')} / {fmt(c['delay_max'], '.0f')} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", default="tiny-sd3,tiny-flux")
    parser.add_argument("--benign-runs", type=int, default=2048)
    parser.add_argument("--changed-runs", type=int, default=512)
    parser.add_argument("--out", default="drift", help="output name under evaluation/ (.md and .json)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.deployments.split(","):
            results.append(evaluate(name, args.benign_runs, args.changed_runs, Path(tmp)))
            (HERE / f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n")
    (HERE / f"{args.out}.md").write_text(to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    main()
