"""Which statistic sees a gain on one 2 x 2 patch position of the denoiser's output (the study behind
`phase_gain`)?

    python evaluation/phase_gain_candidates.py [--runs 160] [--reference 400] [--onset 4]

Per deployment: `--reference` benign runs on calibration prompts (seeds from 700000) fit each
candidate's per-step envelope; `--runs` benign and as many `patch_gain` runs (model mode, from step
`--onset`) on evaluation prompts (seeds from 900000, the same for both) are scored. Per candidate:
the AUROC of the request score (max over steps of the step-normalised score, as a detector's) and the
fraction of faulty runs above the largest benign one. Statistics from `trajectory_stats` with the
previous step's x0_hat, as the service computes them.

Candidates:
  checkerboard            the shipped detector: x0_hat's contrasts, each with its own envelope
  x0_hat, GLS + channels  phase_gain's two parts on x0_hat's own log-energy contrasts
  change, shared          Hotelling's T^2 of the 3-vector common to all channels (GLS), on the change
  change, per channel     channel mean of each channel's own T^2, on the change
  change, both            `phase_gain` as shipped (the worse of the two)

In-distribution for the choice: the candidates are judged on the drill that motivated them; the
shipped detector's rows in evaluate_detectors.py are the measurement. Writes
evaluation/phase-gain.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from latentguard.detectors import Drill
from latentguard.detectors.checkerboard import Checkerboard
from latentguard.detectors.phase_gain import PhaseGain, log_contrasts
from latentguard.kernels import TrajectoryStats, trajectory_stats
from latentguard.server.config import Settings
from latentguard.server.offline.scenes import prompts
from latentguard.server.pipelines.deployments import load_deployment
from latentguard.server.pipelines.runner import PipelineRunner

HERE = Path(__file__).parent


class OnX0(PhaseGain):
    def feature(self, stats: TrajectoryStats) -> torch.Tensor:
        return log_contrasts(stats.phase_contrast.double()).flatten(-2)


class OnePart(PhaseGain):
    def __init__(self, part: int):
        super().__init__()
        self.part = part

    def combine(self, z: torch.Tensor) -> torch.Tensor:
        return super().combine(z)[..., self.part : self.part + 1]


def series(runner: PipelineRunner, captions: list[str], seed: int, drill: Drill | None):
    """(stats [N, S, ...] of every step with the previous step's x0_hat, sigmas)."""
    out = []
    for i in range(0, len(captions), 8):
        chunk = captions[i : i + 8]
        run = runner.denoise_at_defaults(
            chunk, list(range(seed + i, seed + i + len(chunk))), drill, record=True
        )
        assert run.trajectory is not None
        previous, steps = run.trajectory.latents[0].float(), []
        for s in range(run.trajectory.steps):
            x0 = run.trajectory.x0_hat(s).float()
            steps.append(trajectory_stats(x0, backend="reference", previous=previous))
            previous = x0
        out.append(TrajectoryStats.stack(steps))
        print(f"  {min(i + 8, len(captions))}/{len(captions)}", file=sys.stderr, end="\r")
    return TrajectoryStats.cat(out), list(run.trajectory.sigmas)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=160)
    parser.add_argument("--reference", type=int, default=400)
    parser.add_argument("--onset", type=int, default=4)
    parser.add_argument("--strengths", default="0.1,0.3")
    args = parser.parse_args()
    candidates = {
        "checkerboard (shipped; x0_hat contrasts, each its own envelope)": Checkerboard,
        "x0_hat log contrasts, GLS shared + per channel": OnX0,
        "change log contrasts, shared (GLS)": lambda: OnePart(0),
        "change log contrasts, per channel": lambda: OnePart(1),
        "change log contrasts, both (phase_gain)": PhaseGain,
    }
    strengths = [float(s) for s in args.strengths.split(",")]
    lines = [
        f"{args.reference} benign reference runs (calibration prompts), {args.runs} benign and {args.runs} "
        f"`patch_gain` runs per strength (evaluation prompts, the same seeds), model mode from step "
        f"{args.onset}. Cells: request AUROC / fraction of faulty runs above the largest benign score "
        "(`python evaluation/phase_gain_candidates.py`).",
        "",
        "| deployment | candidate | " + " | ".join(f"patch_gain {s:g}" for s in strengths) + " |",
        "|---|---|" + "---|" * len(strengths),
    ]
    for name in ("tiny-sd3", "tiny-flux"):
        runner = PipelineRunner(load_deployment(Settings().deployment(name), with_profile=False))
        print(name, file=sys.stderr)
        reference, sigmas = series(runner, prompts(args.reference, "calibration", seed=3), 700_000, None)
        captions = prompts(args.runs, "evaluation", seed=11)
        benign, _ = series(runner, captions, 900_000, None)
        faulty = {
            s: series(runner, captions, 900_000, Drill("patch_gain", step=args.onset, strength=s))[0]
            for s in strengths
        }
        for label, make in candidates.items():
            det = make().fit(reference, sigmas)
            b = det.trajectory_scores(benign, sigmas).amax(dim=1).numpy()
            cells = []
            for s in strengths:
                f = det.trajectory_scores(faulty[s], sigmas).amax(dim=1).numpy()
                auroc = roc_auc_score(np.r_[np.zeros(len(b)), np.ones(len(f))], np.r_[b, f])
                cells.append(f"{auroc:.3f} / {(f > b.max()).mean():.2f}")
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
            print(lines[-1], file=sys.stderr)
    text = "\n".join(lines) + "\n"
    (HERE / "phase-gain.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
