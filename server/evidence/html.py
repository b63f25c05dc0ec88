"""One evidence bundle as a self-contained HTML page: the picture, the x0_hat previews, and per-step
score plots of every detector with its threshold and the flagged steps marked (inline SVG; the
pictures are data: URIs, so the page is one file that opens anywhere, offline)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from matplotlib.figure import Figure

from latentguard.server.report import Report

PICTURES = (
    ("image.png", "Image"),
    ("x0_flagged.png", "x0_hat at the first flagged step (latent channels 0-2)"),
    ("x0_last.png", "x0_hat at the last step run (latent channels 0-2)"),
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1100px; }
h1 { font-size: 1.4em; } .verdict-flag { color: #b36b00; } .verdict-abort { color: #b00020; }
.verdict-pass { color: #1b7f3b; } table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 0.9em; }
figure { display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }
figure img { width: 256px; image-rendering: pixelated; border: 1px solid #ccc; }
figcaption { font-size: 0.8em; max-width: 256px; }
"""


def score_plot(report: Report) -> str:
    """Inline SVG: one panel per detector, its per-step score, the threshold, flagged steps in red."""
    names = [d.name for d in report.detectors]
    if not names or not report.steps:
        return "<p>No per-step scores in this report.</p>"
    cols = 3
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(11, 2.2 * rows))  # no pyplot: no global state, safe off the main thread
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for ax, det in zip(axes.flat, report.detectors, strict=False):
        steps = [s.step for s in report.steps if det.name in s.scores]
        scores = [s.scores[det.name] for s in report.steps if det.name in s.scores]
        ax.plot(steps, scores, color="#3465a4", lw=1.5, marker=".")
        ax.axhline(det.threshold, color="#cc0000", ls="--", lw=1, label="threshold")
        over = [(x, y) for x, y in zip(steps, scores, strict=True) if y > det.threshold]
        if over:
            ax.scatter(*zip(*over, strict=True), color="#cc0000", zorder=3, s=25)
        if det.first_step >= 0:
            ax.axvline(det.first_step, color="#cc0000", lw=0.8, alpha=0.5)
        title = f"{det.name}{' (flagged)' if det.flagged else ''}{' (error)' if det.error else ''}"
        ax.set_title(title, fontsize=9, color="#cc0000" if det.flagged else "#222")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _row(key: str, value: Any) -> str:
    return f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>"


def render(meta: dict[str, Any], report: Report, pictures: dict[str, bytes]) -> str:
    """The page of one bundle (`pictures`: file name -> PNG bytes, the ones the bundle has)."""
    rid = str(meta.get("request_id", ""))
    figures = "".join(
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(pictures[name]).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        for name, caption in PICTURES
        if name in pictures
    )
    facts = [
        ("request id", rid),
        ("time", meta.get("time", "")),
        ("deployment", f"{report.deployment} ({report.family}, {report.variant})"),
        ("verdict", report.verdict),
        ("flagged", ", ".join(report.flagged_detectors) or "none"),
        ("steps", f"{report.steps_run} of {report.steps_requested} run"),
        ("aborted at step", report.aborted_at_step if report.aborted_at_step >= 0 else "not aborted"),
        ("seed", report.seed),
        ("source", meta.get("source", "")),
        ("trace id", meta.get("trace_id") or "not traced"),
        ("profile fingerprint", report.profile or "uncalibrated"),
        ("weights fingerprint", meta.get("weights", "")),
        (
            "prompt",
            meta.get(
                "prompt", f"HMAC {meta.get('prompt_hmac', 'n/a')} (key {meta.get('prompt_key_id', '-')})"
            ),
        ),
    ]
    detectors = "".join(
        f"<tr><td>{html.escape(d.name)}</td><td>{d.score:.3g}</td><td>{d.threshold:.3g}</td>"
        f"<td>{'yes' if d.flagged else ''}</td><td>{d.first_step if d.first_step >= 0 else ''}</td>"
        f"<td>{html.escape(d.error)}</td></tr>"
        for d in report.detectors
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>latentguard evidence {html.escape(rid)}</title>
<style>{STYLE}</style></head>
<body>
<h1>Request {html.escape(rid)}: <span class="verdict-{report.verdict}">{report.verdict}</span></h1>
<table>{"".join(_row(k, v) for k, v in facts)}</table>
<h2>Pictures</h2>
<div>{figures or "<p>No pictures in this bundle.</p>"}</div>
<h2>Per-step scores</h2>
<p>Step-normalised score per detector; dashed: its threshold; red dots: steps over it; the vertical
line: the first flagged step.</p>
{score_plot(report)}
<h2>Detectors</h2>
<table><tr><th>detector</th><th>score (max)</th><th>threshold</th><th>flagged</th><th>first step</th>
<th>error</th></tr>{detectors}</table>
</body></html>
"""
