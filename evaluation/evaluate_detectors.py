"""Detection evaluation on the built-in deployments: benign FPR on fresh prompts, and per drill:
AUROC, TPR at the calibrated FPR, detection delay; the learned classifier as shipped and trained
leave-one-drill-kind-out.

    python evaluation/evaluate_detectors.py [--deployments tiny-sd3,tiny-flux,tiny-sd3-fp8,tiny-sd3-int4]
        [--benign-runs 2000] [--runs 160] [--loo tiny-sd3,tiny-flux] [--out results] [--benign-only]
        [--rows checkerboard,grain]

Everything runs on the scene grammar's "evaluation" prompts (server/offline/prompts/evaluation.txt,
never calibrated or trained on) with seeds from 100000 (calibration uses seeds below 4000, the
classifier's training runs 500000 and up). The guard runs with the shipped profiles exactly as in
service (annotate-only, so every step is scored). Drill onsets cycle over 2, 4, 6, 8 by batch.

- benign FPR: the fraction of benign requests with a non-pass verdict, with its Clopper-Pearson 95%
  interval; per detector too. `--benign-only` measures just this (about 5 minutes per deployment).
- AUROC: benign vs drilled runs, on the request's overall margin max over detectors and steps of
  (score - threshold) ("verdict"), and on the detector built for that fault alone.
- TPR: the fraction of drilled runs with a non-pass verdict at the calibrated thresholds; "within 2
  steps": flagged no later than two steps after the onset.
- image PSNR: decoded final image with the drill against the same prompt and seed without it (16
  pairs), to say how strong a strength is in terms a person sees.
- attention faults (server/offline/attention_faults.py: text_key_scale, prompt_fade): model faults
  from step 0 that no drill injects, for the attention detectors; delays count from step 0. They
  hook this process's model, so they are skipped under --ray.
- classifier: AUROC and TPR (at its own threshold from the profile) of the shipped model, and of a
  model trained the same way without the row's kind ("LOO"; its threshold is set at the profile's
  per-detector level on the benign evaluation runs, i.e. its TPR is at a matched FPR).
Writes evaluation/<out>.md and evaluation/<out>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from latentguard.detectors import Drill
from latentguard.detectors.base import conformal_threshold
from latentguard.detectors.calibration import clopper_pearson
from latentguard.detectors.classifier import Classifier
from latentguard.server.config import Settings
from latentguard.server.offline import classifier as classifier_training
from latentguard.server.offline.ab_stats import psnr
from latentguard.server.offline.attention_faults import attention_fault
from latentguard.server.offline.calibrate import CLASSIFIER_SEEDS, FIT_FRACTION, split_by_prompt
from latentguard.server.offline.distributed import RayCollector, cluster
from latentguard.server.offline.trajectories import LocalCollector, RunCount, default_prompts, run_grid
from latentguard.server.pipelines.deployments import load_deployment
from latentguard.server.pipelines.runner import PipelineRunner

# (kind, mode, strengths); the first block are the original drills, the second the new artifact
# classes as model faults, the third model-fault forms of the original kinds (held out everywhere),
# then patch_gain (a gain on the prediction at one patch position; held out everywhere)
ROWS = [
    ("aliasing", "step", (0.1, 0.25, 0.5)),
    ("collapse", "step", (0.1, 0.3, 0.5)),
    ("blur", "step", (0.2, 0.5, 0.8)),
    ("nan", "step", (0.001, 0.01)),
    ("checkerboard", "model", (0.05, 0.1, 0.2)),
    ("grain", "model", (0.1, 0.2, 0.4)),
    ("spike", "model", (0.1, 0.3, 0.5)),
    ("aliasing", "model", (0.1, 0.25)),
    ("blur", "model", (0.3, 0.6)),
    ("collapse", "model", (0.1, 0.3)),
    ("patch_gain", "model", (0.1, 0.3)),
]
# attention faults (server/offline/attention_faults.py): model faults on every step, held out from
# everything (no drill injects them; the attention detectors' design was fixed before they existed)
ATTENTION_ROWS = [
    ("text_key_scale", (1.25, 1.5, 2.0)),
    ("prompt_fade", (0.25, 0.5)),
]
TARGET_DETECTOR = {
    "aliasing": "spectral_residual",
    "collapse": "latent_variance",
    "blur": "over_smoothing",
    "nan": "non_finite",
    "checkerboard": "checkerboard",
    "grain": "grain",
    "spike": "tail",
    "patch_gain": "phase_gain",
    "text_key_scale": "attention_entropy",
    "prompt_fade": "attention_entropy",
}
INJECT_STEPS = (2, 4, 6, 8)
SEED_BASE = 100_000
PSNR_PAIRS = 16
HERE = Path(__file__).parent


def margins(stats, sigmas, detectors):
    """[N] overall margin, per-detector [N] request scores, [N, S] any-flag per step."""
    scores = {n: torch.nan_to_num(d.trajectory_scores(stats, sigmas), nan=-1e9) for n, d in detectors.items()}
    over = torch.stack([scores[n] > detectors[n].threshold for n in detectors]).any(dim=0)
    overall = torch.stack([(scores[n] - detectors[n].threshold).amax(dim=1) for n in detectors]).amax(0)
    return overall, {n: s.amax(dim=1) for n, s in scores.items()}, over


def auroc(benign: torch.Tensor, drilled: torch.Tensor) -> float:
    y = [0] * len(benign) + [1] * len(drilled)
    return float(roc_auc_score(y, torch.cat([benign, drilled]).clamp(-1e6, 1e6).tolist()))


def image_psnr(dep, drill: Drill | None, prompts: list[str], fault=nullcontext) -> float:
    """Mean PSNR of the faulty image (the drill, or under the `fault` context) against the clean one."""
    runner, values = PipelineRunner(dep), []
    for i in range(PSNR_PAIRS):
        images = []
        for faulty in (False, True):
            with fault() if faulty else nullcontext():
                run = runner.denoise_at_defaults([prompts[i]], [SEED_BASE + i], drill if faulty else None)
            if not torch.isfinite(run.latents).all():
                return float("nan")
            images.append(np.asarray(dep.family.decode(dep.pipe, run.latents)[0]))
        values.append(psnr(images[1], images[0]))
    return float(np.mean([v for v in values if math.isfinite(v)] or [math.inf]))


def loo_classifiers(dep, source, kinds: list[str], benign_eval) -> dict[str, Classifier]:
    """Per held-out kind: a classifier trained as the shipped one is (same runs, same procedure)
    but without that kind, thresholded on the benign evaluation runs at the rank the profile's
    thresholds sit at on its held-out runs (FPR-matched)."""
    fit_prompts, _ = split_by_prompt(default_prompts("calibration"), FIT_FRACTION)
    runs = run_grid(fit_prompts, 1, first_seed=CLASSIFIER_SEEDS)
    data, sigmas = classifier_training.training_runs(source, runs)
    benign_train = data.stats.index(torch.tensor([k == "" for k in data.kinds]))
    report = dep.profile.report  # the same rank r as the profile's thresholds: level r / (n + 1)
    rank = max(1, round(report.per_detector_alpha * (report.calibration_runs + 1)))
    level = rank / (len(benign_eval.stats.mean) + 1)
    out = {}
    for kind in kinds:
        clf = Classifier().fit_envelope(benign_train, sigmas)
        clf.set_model(classifier_training.train(clf, data.without(kind), sigmas))
        clf.fit_normalisation(benign_train, sigmas)
        clf.threshold = conformal_threshold(
            clf.trajectory_scores(benign_eval.stats, benign_eval.sigmas).amax(dim=1), level
        )
        out[kind] = clf
        print(f"  LOO classifier without {kind} trained", file=sys.stderr)
    return out


def evaluate(
    name: str,
    runs: int,
    benign_runs: int,
    batch: int,
    loo: bool,
    ray: tuple,
    benign_only: bool = False,
    kinds: set[str] | None = None,
) -> tuple[dict, list[dict]]:
    """(benign summary, drill rows) of one deployment; `kinds`: only the rows of these drill kinds."""
    drill_rows = [r for r in ROWS if kinds is None or r[0] in kinds]
    attention_rows = [r for r in ATTENTION_ROWS if kinds is None or r[0] in kinds]
    dep = load_deployment(Settings().deployment(name))
    assert dep.profile is not None, f"{name} has no shipped profile"
    address, workers = ray
    if address and attention_rows and not benign_only:  # they hook this process's model
        print("  attention faults skipped: they need the local collector", file=sys.stderr)
        attention_rows = []
    source = RayCollector(Settings(), name, workers, batch) if address else LocalCollector(dep, batch)
    detectors = dep.detectors
    prompts = default_prompts("evaluation")
    pairs = [(prompts[i % len(prompts)], SEED_BASE + i) for i in range(max(runs, benign_runs))]
    drilled_rows = [] if benign_only else drill_rows + attention_rows
    drilled = runs * sum(len(strengths) for *_, strengths in drilled_rows)
    counted = RunCount(name, benign_runs + drilled)
    t0 = time.time()
    benign = source.collect(pairs[:benign_runs], progress=counted)
    b_margin, b_det, _ = margins(benign.stats, benign.sigmas, detectors)
    flagged = int((b_margin > 0).sum())
    summary = {
        "deployment": name,
        "benign_runs": benign_runs,
        "benign_fpr": flagged / benign_runs,
        "benign_fpr_interval": clopper_pearson(flagged, benign_runs),
        "per_detector_fpr": {n: float((s > detectors[n].threshold).float().mean()) for n, s in b_det.items()},
        "target_fpr": dep.profile.report.target_fpr,
    }
    print(
        f"{name}: benign {benign_runs} runs in {time.time() - t0:.0f}s, FPR {summary['benign_fpr']:.4f}",
        file=sys.stderr,
    )
    if benign_only:
        return summary, []
    clf = detectors.get("onnx_classifier")
    trained = sorted({k for k, _, _ in drill_rows} & set(classifier_training.TRAINED_KINDS))
    loo_models = loo_classifiers(dep, source, trained, benign) if loo else {}
    loo_benign = {
        k: c.trajectory_scores(benign.stats, benign.sigmas).amax(dim=1) for k, c in loo_models.items()
    }

    def row(kind: str, mode: str, strength: float, got, onsets: list[int], image_db: float) -> dict:
        p_margin, p_det, p_flags = margins(got.stats, got.sigmas, detectors)
        delays = []
        for i, flags in enumerate(p_flags):
            onset = onsets[(i // batch) % len(onsets)]
            hit = flags[onset:].nonzero()
            delays.append(int(hit[0]) if hit.numel() else None)
        detected = [d for d in delays if d is not None]
        target = TARGET_DETECTOR[kind]
        result = {
            "deployment": name,
            "drill": kind,
            "mode": mode,
            "strength": strength,
            "drilled_runs": len(p_margin),
            "image_psnr_db": image_db,
            "auroc": auroc(b_margin, p_margin),
            "auroc_target_detector": auroc(b_det[target], p_det[target]) if target in p_det else None,
            "target_detector": target,
            "tpr": float((p_margin > 0).float().mean()),
            "within_2_steps": sum(d <= 2 for d in detected) / len(delays),
            "delay_median": float(np.median(detected)) if detected else None,
        }
        if clf is not None:
            result["classifier_auroc"] = auroc(b_det[clf.name], p_det[clf.name])
            result["classifier_tpr"] = float((p_det[clf.name] > clf.threshold).float().mean())
        if kind in loo_models:
            held = loo_models[kind]
            scores = held.trajectory_scores(got.stats, got.sigmas).amax(dim=1)
            result["loo_auroc"] = auroc(loo_benign[kind], scores)
            result["loo_tpr"] = float((scores > held.threshold).float().mean())
        print(
            f"  {kind}/{mode}@{strength}: AUROC {result['auroc']:.4f} TPR {result['tpr']:.3f} "
            f"PSNR {result['image_psnr_db']:.1f}",
            file=sys.stderr,
        )
        return result

    rows = []
    for kind, mode, strengths in drill_rows:
        for strength in strengths:
            drills = [Drill(kind, step=s, strength=strength, mode=mode) for s in INJECT_STEPS]
            got = source.collect(pairs[:runs], drill=drills, progress=counted)
            rows.append(
                row(kind, mode, strength, got, list(INJECT_STEPS), image_psnr(dep, drills[0], prompts))
            )
    for kind, strengths in attention_rows:
        for strength in strengths:
            fault = lambda k=kind, s=strength: attention_fault(dep, k, s)  # noqa: E731
            with fault():
                got = source.collect(pairs[:runs], progress=counted)
            rows.append(row(kind, "attention", strength, got, [0], image_psnr(dep, None, prompts, fault)))
    return summary, rows


def fmt(x, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def to_markdown(summaries: list[dict], rows: list[dict]) -> str:
    lines = [
        "| deployment | benign runs | benign FPR (target) | 95% interval | per detector |",
        "|---|---|---|---|---|",
    ]
    for s in summaries:
        lo, hi = s["benign_fpr_interval"]
        per = ", ".join(f"{n} {v:.4f}" for n, v in s["per_detector_fpr"].items() if v > 0) or "none"
        lines.append(
            f"| {s['deployment']} | {s['benign_runs']} | {s['benign_fpr']:.4f} ({s['target_fpr']:g}) "
            f"| [{lo:.4f}, {hi:.4f}] | {per} |"
        )
    if not rows:  # --benign-only
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "| deployment | drill | mode | strength | image PSNR (dB) | AUROC (verdict) "
        "| AUROC (target detector) | TPR @ calibrated FPR | within 2 steps | median delay "
        "| classifier AUROC / TPR | LOO classifier AUROC / TPR |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        clf = f"{fmt(r.get('classifier_auroc'), '.4f')} / {fmt(r.get('classifier_tpr'), '.3f')}"
        loo = (
            f"{fmt(r.get('loo_auroc'), '.4f')} / {fmt(r.get('loo_tpr'), '.3f')}" if "loo_auroc" in r else "-"
        )
        target = f"{fmt(r['auroc_target_detector'], '.4f')} ({r['target_detector']})"
        lines.append(
            f"| {r['deployment']} | {r['drill']} | {r['mode']} | {r['strength']:g} "
            f"| {fmt(r['image_psnr_db'], '.1f')} | {r['auroc']:.4f} | {target} | {r['tpr']:.3f} "
            f"| {r['within_2_steps']:.3f} | {fmt(r['delay_median'], '.1f')} | {clf} | {loo} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", default="tiny-sd3,tiny-flux,tiny-sd3-fp8,tiny-sd3-int4")
    parser.add_argument("--runs", type=int, default=160, help="drilled runs per drill and strength")
    parser.add_argument("--benign-runs", type=int, default=2000)
    parser.add_argument(
        "--loo", default="tiny-sd3,tiny-flux", help="deployments with leave-one-out classifiers"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="results", help="output name under evaluation/ (.md and .json)")
    parser.add_argument("--ray", default=None, help="run on Ray: 'local' or an address for ray.init")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--benign-only", action="store_true", help="only the benign FPR on fresh prompts")
    parser.add_argument("--rows", default=None, help="only these drill kinds, e.g. checkerboard,grain")
    args = parser.parse_args()
    kinds = set(args.rows.split(",")) if args.rows else None
    if kinds is not None and (unknown := kinds - {r[0] for r in ROWS} - {r[0] for r in ATTENTION_ROWS}):
        parser.error(f"--rows: no rows of kind {', '.join(sorted(unknown))}")
    summaries, rows = [], []
    ray = (args.ray, args.ray_workers)
    with cluster(*ray) if args.ray else nullcontext():
        for name in args.deployments.split(","):
            loo = name in args.loo.split(",")
            summary, got = evaluate(
                name, args.runs, args.benign_runs, args.batch, loo, ray, args.benign_only, kinds
            )
            summaries.append(summary)
            rows += got
            results = {"benign": summaries, "drills": rows}
            (HERE / f"{args.out}.json").write_text(json.dumps(results, indent=1) + "\n")
    (HERE / f"{args.out}.md").write_text(to_markdown(summaries, rows))
    print(to_markdown(summaries, rows))


if __name__ == "__main__":
    main()
