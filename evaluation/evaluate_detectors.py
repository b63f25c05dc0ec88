"""Detection evaluation on the built-in deployments: AUROC, TPR at the calibrated FPR, detection delay.

    python evaluation/evaluate_detectors.py [--deployments tiny-sd3,tiny-flux]
        [--runs 200] [--benign-runs 1000] [--out results]

For each deployment: `--benign-runs` benign runs and, for each drill kind at each strength, `--runs`
drilled runs, all on evaluation prompts and seeds disjoint from calibration (prompts from
server/offline/prompts/evaluation.txt, seeds from 100000; calibration uses seeds below 1600). Injection steps
cycle over 2, 4, 6, 8 by batch. Strength is relative to the per-channel std of x0_hat (drills.py).
The guard runs with the shipped calibration profile, exactly as in the service (annotate-only, so
every step is scored). Writes evaluation/<out>.md and evaluation/<out>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from latentguard.detectors import Drill
from latentguard.server.config import Settings
from latentguard.server.offline.calibrate import PROMPTS_DIR, collect, read_prompts
from latentguard.server.pipelines.deployments import load_deployment

STRENGTHS = {
    "aliasing": (0.1, 0.25, 0.5),
    "collapse": (0.1, 0.3, 0.5),
    "blur": (0.2, 0.5, 0.8),
    "nan": (0.001, 0.01),
}
TARGET_DETECTOR = {
    "aliasing": "spectral_residual",
    "collapse": "latent_variance",
    "blur": "over_smoothing",
    "nan": "non_finite",
}
INJECT_STEPS = (2, 4, 6, 8)
SEED_BASE = 100_000
HERE = Path(__file__).parent


def margins(guards, detectors):
    """Per run: overall margin max_d max_s (score - threshold), per-detector max score, flags per step."""
    overall, per_det, flag_steps = [], {n: [] for n in detectors}, []
    for g in guards:
        mats = {n: torch.nan_to_num(g.score_matrix(n), nan=-1e9) for n in detectors}
        over = torch.stack([mats[n] > detectors[n].threshold for n in detectors]).any(dim=0)  # [B, S]
        overall.append(
            torch.stack([(mats[n] - detectors[n].threshold).amax(dim=1) for n in detectors]).amax(0)
        )
        for n in detectors:
            per_det[n].append(mats[n].amax(dim=1))
        flag_steps.append(over)
    return torch.cat(overall), {n: torch.cat(v) for n, v in per_det.items()}, flag_steps


def evaluate(name: str, runs: int, benign_runs: int, batch: int) -> list[dict]:
    cfg = next(d for d in Settings().deployments if d.name == name)
    dep = load_deployment(cfg)
    assert dep.profile is not None, f"{name} has no shipped profile"
    prompts = read_prompts(PROMPTS_DIR / "evaluation.txt")
    pairs = [(prompts[i % len(prompts)], SEED_BASE + i) for i in range(max(runs, benign_runs))]
    t0 = time.time()
    benign = collect(dep, pairs[:benign_runs], detectors=dep.detectors, batch_size=batch)
    b_margin, b_det, _ = margins(benign.guards, dep.detectors)
    benign_fpr = float((b_margin > 0).float().mean())
    elapsed = time.time() - t0
    print(f"{name}: benign {benign_runs} runs in {elapsed:.0f}s, FPR {benign_fpr:.3f}", file=sys.stderr)
    rows = []
    for kind, strengths in STRENGTHS.items():
        for strength in strengths:
            t0 = time.time()
            drills = [Drill(kind, step=s, strength=strength) for s in INJECT_STEPS]  # type: ignore[arg-type]
            got = collect(
                dep, pairs, detectors=dep.detectors, batch_size=batch, drill=lambda b, d=drills: d[b % len(d)]
            )
            p_margin, p_det, p_flags = margins(got.guards, dep.detectors)
            delays = []
            for b, flags in enumerate(p_flags):
                inj = drills[b % len(drills)].step
                for row in flags[:, inj:]:
                    hit = row.nonzero()
                    delays.append(int(hit[0]) if hit.numel() else None)
            detected = [d for d in delays if d is not None]
            y = [0] * len(b_margin) + [1] * len(p_margin)
            target = TARGET_DETECTOR[kind]
            row = {
                "deployment": name,
                "drill": kind,
                "strength": strength,
                "benign_runs": len(b_margin),
                "drilled_runs": len(p_margin),
                "auroc": float(roc_auc_score(y, torch.cat([b_margin, p_margin]).tolist())),
                "auroc_target_detector": float(
                    roc_auc_score(y, torch.cat([b_det[target], p_det[target]]).tolist())
                ),
                "target_detector": target,
                "tpr": float((p_margin > 0).float().mean()),
                "benign_fpr": benign_fpr,
                "delay_median": float(torch.tensor(detected, dtype=torch.float).median())
                if detected
                else None,
                "within_2_steps": sum(d <= 2 for d in detected) / len(delays),
            }
            rows.append(row)
            print(
                f"  {kind}@{strength}: AUROC {row['auroc']:.4f} TPR {row['tpr']:.3f} "
                f"delay {row['delay_median']} ({time.time() - t0:.0f}s)",
                file=sys.stderr,
            )
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| deployment | drill | strength | AUROC (verdict) | AUROC (target detector) | TPR @ calibrated FPR "
        "| benign FPR | median delay (steps) | detected within 2 steps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['deployment']} | {r['drill']} | {r['strength']:g} | {r['auroc']:.4f} | "
            f"{r['auroc_target_detector']:.4f} ({r['target_detector']}) | {r['tpr']:.3f} | "
            f"{r['benign_fpr']:.3f} | "
            f"{r['delay_median']} | {r['within_2_steps']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", default="tiny-sd3,tiny-flux")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--benign-runs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="results", help="output name under evaluation/ (.md and .json)")
    args = parser.parse_args()
    rows = []
    for name in args.deployments.split(","):
        rows += evaluate(name, args.runs, args.benign_runs, args.batch)
    (HERE / f"{args.out}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (HERE / f"{args.out}.md").write_text(to_markdown(rows))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
