"""Why moderate faults are flagged late: at the steps right after a fault's onset, how well does the
statistic a detector read in round 2 separate benign from faulty runs, and how well would a candidate?

    python evaluation/onset_separability.py [--runs 64] [--onset 4]

For each case (deployment, model-mode drill at a moderate strength; the rows issue 12's "within 2
steps" bar fails on), the same evaluation prompts and seeds run benign and drilled with the
trajectory recorded; every statistic below is computed from the recorded x0_hat with plain torch
(float64), per step. Printed per step from the onset: AUROC, and the fraction of drilled runs above
the largest benign value at that step (the calibrated thresholds sit near the benign maximum over
all steps and detectors, so this is an upper bound of what a detector on that statistic could flag).

Round 2 (the field the detector read, reduced as it reduced):
  checkerboard  log of the 2 x 2 phase imbalance, max over the three parity patterns, channel mean
  tail          log crest factor, worst channel
  grain         log high-band spectral flatness of x0_hat, channel mean
Candidates (what the detectors read since round 3 for checkerboard and grain, round 4 for the
checkerboard's coherent part and tail, except the sum over channels, which was not built):
  checkerboard  |contrast of the checkerboard pattern alone| (sum s_ab m_ab / sum m_ab), channel mean:
                the row and column patterns carry the model's own 2 x 2 patch structure, whose
                spread across prompts drowns the checkerboard in the max over patterns
                |channel mean of that contrast|: benign contrasts differ in sign from channel to
                channel (tiny-sd3-int4's quantised weights leave per-channel ones of their own) and
                cancel in the mean; a modulation on one phase in every channel does not
  tail          max over pixels of sum over channels of z^2 (z: per-channel standardised): a stuck
                activation lands on one position in every channel, benign extremes do not
                log crest of the step-to-step change of x0_hat, worst channel: a small object on a
                flat background is itself many std from the mean, but forms gradually; a stuck
                value appears at once
  grain         high-band flatness of the step-to-step change of x0_hat: noise drawn afresh at each
                denoiser call is incoherent between steps, image content is not

In-distribution: each candidate is judged here on the very drill it targets. It is a lead, not a
result; a detector built on one needs its own profile and the held-out kinds of
evaluate_detectors.py before anything is claimed. Writes evaluation/onset-separability.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from latentguard.detectors import Drill
from latentguard.kernels.stats import HF_CUTOFF, PARITY_PATTERNS
from latentguard.server.config import Settings
from latentguard.server.offline.scenes import prompts
from latentguard.server.pipelines.deployments import load_deployment
from latentguard.server.pipelines.runner import PipelineRunner

HERE = Path(__file__).parent
CASES = [
    ("tiny-sd3", "checkerboard", 0.1),
    ("tiny-sd3-int4", "checkerboard", 0.1),
    ("tiny-sd3", "spike", 0.3),
    ("tiny-flux", "spike", 0.3),
    ("tiny-flux", "grain", 0.2),
]
SEEDS = 900_000  # apart from calibration (< 4000), evaluation (100000+) and classifier (500000+) seeds


def x0_hats(runner: PipelineRunner, captions: list[str], drill: Drill | None) -> torch.Tensor:
    """[N, S, C, H, W] x0_hat of every step, float64."""
    out = []
    for i in range(0, len(captions), 8):
        chunk = captions[i : i + 8]
        seeds = list(range(SEEDS + i, SEEDS + i + len(chunk)))
        run = runner.denoise_at_defaults(chunk, seeds, drill, record=True)
        assert run.trajectory is not None
        out.append(torch.stack([run.trajectory.x0_hat(s) for s in range(run.trajectory.steps)], 1))
        print(f"  {len(out) * 8}/{len(captions)}", file=sys.stderr, end="\r")
    return torch.cat(out).double()


def centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=(-2, -1), keepdim=True)


def phase_contrasts(x: torch.Tensor) -> torch.Tensor:
    """[..., C, 3]: sum_ab s_ab m_ab / sum_ab m_ab for the checkerboard, row and column patterns."""
    sq = centred(x) ** 2
    m = torch.stack([sq[..., a::2, b::2].mean(dim=(-2, -1)) for a in (0, 1) for b in (0, 1)], -1)
    return m @ torch.tensor(PARITY_PATTERNS, dtype=m.dtype).t() / m.sum(-1, keepdim=True).clamp_min(1e-30)


def hf_flatness(x: torch.Tensor) -> torch.Tensor:
    """[..., C]: geometric over arithmetic mean of the power at radial frequency >= HF_CUTOFF."""
    h, w = x.shape[-2:]
    radius = (torch.fft.fftfreq(h)[:, None] ** 2 + torch.fft.fftfreq(w)[None, :] ** 2).sqrt()
    band = (torch.fft.fft2(centred(x)).abs() ** 2)[..., radius >= HF_CUTOFF]
    return torch.exp(torch.log(band + 1e-30).mean(-1)) / band.mean(-1).clamp_min(1e-30)


def standardised(x: torch.Tensor) -> torch.Tensor:
    return centred(x) / x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


def step_change(x: torch.Tensor) -> torch.Tensor:
    """x0_hat minus the previous step's, for s >= 1 (NaN at step 0: the initial latents are not kept)."""
    return torch.cat([torch.full_like(x[:, :1], float("nan")), x[:, 1:] - x[:, :-1]], 1)


def statistics(kind: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: [N, S]} for round 2's statistic and the candidates of a drill kind."""
    if kind == "checkerboard":
        c = phase_contrasts(x)
        imbalance = c.abs().amax(-1)  # TrajectoryStats.phase_imbalance
        return {
            "round 2: log max-pattern imbalance, channel mean": imbalance.clamp_min(1e-12).log().mean(-1),
            "candidate: |checkerboard contrast|, channel mean": c[..., 0].abs().mean(-1),
            "candidate: |channel mean of checkerboard contrast|": c[..., 0].mean(-1).abs(),
        }
    if kind == "spike":
        z, z_change = standardised(x), standardised(step_change(x))
        return {
            "round 2: log crest, worst channel": z.abs().amax(dim=(-2, -1)).log().amax(-1),
            "candidate: max over pixels of sum_c z^2": (z**2).sum(2).amax(dim=(-2, -1)),
            "candidate: log crest of the step change, worst channel": z_change.abs()
            .amax(dim=(-2, -1))
            .log()
            .amax(-1),
        }
    return {
        "round 2: log hf flatness of x0_hat, channel mean": hf_flatness(x).log().mean(-1),
        "candidate: log hf flatness of the step change": hf_flatness(step_change(x)).log().mean(-1),
    }


def separability(benign: torch.Tensor, faulty: torch.Tensor) -> tuple[float, float]:
    b, f = benign.numpy(), faulty.numpy()
    labels = np.r_[np.zeros(len(b)), np.ones(len(f))]
    return float(roc_auc_score(labels, np.r_[b, f])), float((f > b.max()).mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=64)
    parser.add_argument("--onset", type=int, default=4)
    args = parser.parse_args()
    captions = prompts(args.runs, "evaluation", seed=11)
    lines = [
        f"{args.runs} benign and {args.runs} drilled runs per case (evaluation prompts, seeds from "
        f"{SEEDS}), model-mode drill from step {args.onset}; per step: AUROC / fraction of drilled runs "
        "above the benign maximum (`python evaluation/onset_separability.py`).",
        "",
        "| deployment | drill | statistic | " + " | ".join(f"step {args.onset + k}" for k in range(3)) + " |",
        "|---|---|---|---|---|---|",
    ]
    loaded: dict[str, PipelineRunner] = {}
    for name, kind, strength in CASES:
        if name not in loaded:
            loaded[name] = PipelineRunner(load_deployment(Settings().deployment(name), with_profile=False))
        print(f"{name} {kind} {strength}", file=sys.stderr)
        benign = statistics(kind, x0_hats(loaded[name], captions, None))
        drill = Drill(kind, step=args.onset, strength=strength, mode="model")  # type: ignore[arg-type]
        faulty = statistics(kind, x0_hats(loaded[name], captions, drill))
        for stat in benign:
            cells = []
            for step in range(args.onset, args.onset + 3):
                auroc, above = separability(benign[stat][:, step], faulty[stat][:, step])
                cells.append(f"{auroc:.3f} / {above:.2f}")
            lines.append(f"| {name} | {kind} {strength:g} | {stat} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (HERE / "onset-separability.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
