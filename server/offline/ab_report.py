"""Writes an A/B report: report.json (everything), report.md (for people), divergence.png, scores.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from latentguard.server.offline.ab import AbReport, Pair


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return "inf" if math.isinf(x) else f"{x:.{digits}g}"
    return str(x)


def markdown(r: AbReport) -> str:
    verdict = "**acceptable**" if r.acceptable else "**not acceptable**"
    header = [
        f"# A/B: {r.candidate.name} ({r.candidate.variant}) vs {r.baseline.name} ({r.baseline.variant})",
        "",
        f"{r.pairs} paired runs (same prompt and seed on both sides)"
        + (f"; drill on the candidate: `{r.drill}`" if r.drill else "")
        + f". Verdict: {verdict}.",
    ]
    sections = [header, _gates(r), _divergence(r), _detectors(r), _images(r), _cost(r)]
    return "\n".join(line for section in sections for line in [*section, ""])


def _gates(r: AbReport) -> list[str]:
    lines = ["## Gates", "", "| gate | value | limit | |", "|---|---|---|---|"]
    for g in r.gates:
        mark = "pass" if g["passed"] else "FAIL"
        lines.append(f"| {g['gate']} | {_fmt(g['value'])} | {g['op']} {_fmt(g['limit'])} | {mark} |")
    return lines


def _divergence(r: AbReport) -> list[str]:
    lines = ["## Divergence per step (relative L2, mean ± std over pairs; cosine mean)", ""]
    lines += ["| step | sigma | latents rel. L2 | x0_hat rel. L2 | x0_hat cosine |", "|---|---|---|---|---|"]
    for d in r.divergence:
        lat, x0 = d["latents_rel_l2"], d["x0_rel_l2"]
        lines.append(
            f"| {d['step']} | {d['sigma']:.3f} | {_fmt(lat['mean'])} ± {_fmt(lat['std'], 2)} "
            f"| {_fmt(x0['mean'])} ± {_fmt(x0['std'], 2)} | {_fmt(d['x0_cosine']['mean'], 6)} |"
        )
    return lines


def _detectors(r: AbReport) -> list[str]:
    lines = [
        "## Detectors",
        "",
        "| detector | flag rate base → cand | McNemar exact p "
        "| score delta median (mean ± std) | Wilcoxon p |",
        "|---|---|---|---|---|",
    ]
    for name, d in r.detectors.items():
        rates = f"{d['baseline_flag_rate']:.3f} → {d['candidate_flag_rate']:.3f}"
        if name == "any":
            lines.append(f"| any | {rates} | {_fmt(d['mcnemar_p'])} | | |")
            continue
        delta = d["score_delta"]
        lines.append(
            f"| {name} | {rates} | {_fmt(d['mcnemar_p'])} | {_fmt(d['score_delta_median'])} "
            f"({_fmt(delta['mean'])} ± {_fmt(delta['std'], 2)}) | {_fmt(d['wilcoxon_p'])} |"
        )
    return lines


def _images(r: AbReport) -> list[str]:
    im = r.images
    return [
        "## Final images",
        "",
        f"{im['compared']} pairs compared ({im['skipped_aborted']} skipped: aborted on a side; "
        f"{im['identical']} identical). PSNR {_fmt(im['psnr_db'].get('mean'))} dB "
        f"(p05 {_fmt(im['psnr_db'].get('p05'))}), SSIM {_fmt(im['ssim'].get('mean'))} "
        f"(p05 {_fmt(im['ssim'].get('p05'))}).",
    ]


def _cost(r: AbReport) -> list[str]:
    lines = [
        "## Cost",
        "",
        "| | seconds per run | peak memory (MB) | transformer weights (MB) |",
        "|---|---|---|---|",
    ]
    for side in ("baseline", "candidate"):
        c = r.cost[side]
        lines.append(
            f"| {side} | {_fmt(c['seconds_per_run'])} | {_fmt(c['peak_memory_mb'])} "
            f"| {_fmt(c['transformer_weights_mb'])} |"
        )
    return [
        *lines,
        "",
        "Peak memory is the process RSS sampled at each step on CPU (process-wide, so it includes the",
        "other deployment) or `torch.cuda.max_memory_allocated` on CUDA; over gRPC it is not known.",
    ]


def plots(r: AbReport, pairs: list[Pair], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [d["step"] for d in r.divergence]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("latents_rel_l2", "latents"), ("x0_rel_l2", "x0_hat")):
        mean = [d[key]["mean"] for d in r.divergence]
        ax.plot(steps, mean, marker="o", label=f"{label} (mean)")
        ax.fill_between(
            steps, [d[key]["p05"] for d in r.divergence], [d[key]["p95"] for d in r.divergence], alpha=0.2
        )
    ax.set(xlabel="step", ylabel="relative L2 vs baseline", title=f"{r.candidate.name} vs {r.baseline.name}")
    ax.legend()
    fig.tight_layout()
    divergence_png = out / "divergence.png"
    fig.savefig(divergence_png, dpi=100)
    plt.close(fig)

    names = [n for n in r.detectors if n != "any"]
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        base = [p.baseline.scores[name] for p in pairs if name in p.baseline.scores]
        cand = [p.candidate.scores[name] for p in pairs if name in p.candidate.scores]
        ax.boxplot([base, cand], tick_labels=["baseline", "candidate"])
        ax.set_title(name, fontsize=9)
    fig.suptitle("request scores (step-normalised)")
    fig.tight_layout()
    scores_png = out / "scores.png"
    fig.savefig(scores_png, dpi=100)
    plt.close(fig)
    return [divergence_png, scores_png]


def write(r: AbReport, pairs: list[Pair], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    report_json, report_md = out / "report.json", out / "report.md"
    report_json.write_text(json.dumps(r.to_dict(), indent=2) + "\n")
    report_md.write_text(markdown(r))
    return [report_json, report_md, *plots(r, pairs, out)]
