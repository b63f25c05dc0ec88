"""Attention probes: they read what the model attends with, never change its output, join the step
statistics and the report, and switch off cleanly when the profile was not calibrated with them."""

from __future__ import annotations

import logging

import pytest
import torch

from latentguard.kernels.attention import sample_rows
from latentguard.server.config import AttentionConfig, DeploymentConfig
from latentguard.server.errors import ModelLoadError
from latentguard.server.offline.attention_faults import attention_fault
from latentguard.server.pipelines.deployments import load_deployment
from latentguard.server.pipelines.requests import GenerateRequest, resolve
from latentguard.server.pipelines.runner import PipelineRunner

PROMPTS = ["a red circle on a blue background", "two yellow squares on a white background"]
ATTENTION = ("attention_entropy", "attention_rank")


def fresh(model: str, family: str, **kw) -> object:
    """A deployment of a built-in model without its profile (the probes are installed all the same)."""
    return load_deployment(DeploymentConfig(name=model, model=model, family=family, **kw), with_profile=False)


@pytest.mark.parametrize(("model", "family"), [("tiny-sd3", "sd3"), ("tiny-flux", "flux")])
def test_probes_leave_the_output_unchanged_and_fill_the_step_statistics(model, family):
    dep = fresh(model, family)
    assert dep.probe_layers == ([0, 1, 2, 3] if family == "sd3" else [0])
    runner = PipelineRunner(dep)
    probed = runner.denoise_at_defaults(PROMPTS, [3, 4])
    layers, dep.probe_layers = dep.probe_layers, []
    plain = runner.denoise_at_defaults(PROMPTS, [3, 4])
    dep.probe_layers = layers
    assert torch.equal(probed.latents, plain.latents)
    stats, without = probed.guard.monitor.stacked(), plain.guard.monitor.stacked()
    assert without.attn_entropy is None and without.attn_rank is None
    assert stats.attn_entropy is not None and stats.attn_rank is not None
    shape = (2, dep.config.steps, len(layers))
    assert stats.attn_entropy.shape == shape and stats.attn_rank.shape == shape
    assert bool(((stats.attn_entropy > 0) & (stats.attn_entropy <= 1)).all())
    assert bool(((stats.attn_rank > 0) & (stats.attn_rank <= 1)).all())
    assert not torch.equal(stats.attn_entropy[0], stats.attn_entropy[1])  # per request, not per batch


def test_probe_reads_the_query_and_key_the_block_attends_with():
    """Recompute block 1's statistics from its inputs and output at the last step (tiny-sd3 has no QK
    norm): the conditional half of the CFG batch, the sampled image queries against the text keys."""
    dep = fresh("tiny-sd3", "sd3", attention=AttentionConfig(layers=[1], max_tokens=32))
    attn = dep.pipe.transformer.transformer_blocks[1].attn
    assert attn.norm_q is None and attn.norm_added_k is None
    seen: dict = {}

    def keep(module, args, kwargs, output):
        seen.update(hidden=kwargs["hidden_states"], text=kwargs["encoder_hidden_states"], out=output[0])

    handle = attn.register_forward_hook(keep, with_kwargs=True)
    try:
        stats = PipelineRunner(dep).denoise_at_defaults(PROMPTS, [5, 6]).guard.monitor.stacked()
    finally:
        handle.remove()
    cond = slice(2, None)  # [unconditional; conditional]
    hidden, text, out = seen["hidden"][cond], seen["text"][cond], seen["out"][cond]
    heads = attn.heads
    rows = sample_rows(hidden.shape[1], 32)
    q = attn.to_q(hidden[:, rows]).unflatten(-1, (heads, -1)).transpose(1, 2)
    k = attn.add_k_proj(text).unflatten(-1, (heads, -1)).transpose(1, 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    entropy = (-(p * p.log()).sum(-1)).mean(dim=(1, 2)) / torch.log(torch.tensor(float(k.shape[2])))
    s = torch.linalg.svdvals(out[:, rows])
    w = s / s.sum(-1, keepdim=True)
    rank = torch.exp(-(w * w.log()).sum(-1)) / min(len(rows), out.shape[-1])
    assert torch.allclose(stats.attn_entropy[:, -1, 0], entropy, atol=1e-5)
    assert torch.allclose(stats.attn_rank[:, -1, 0], rank, atol=1e-5)


def test_served_deployment_runs_attention_detectors_and_reports_the_probes(sd3, settings):
    assert sd3.probe_layers == [0, 1, 2, 3]
    assert set(ATTENTION) <= set(sd3.detectors)
    req = resolve(GenerateRequest(deployment=sd3.name, prompt=PROMPTS[0], seed=11), sd3, settings.limits)
    report = PipelineRunner(sd3).generate(req, decode=False).report
    assert report.verdict == "pass", report.flagged_detectors
    assert {d.name for d in report.detectors} >= set(ATTENTION)
    assert all(0 < s.attention_entropy <= 1 and 0 < s.attention_rank <= 1 for s in report.steps)


def test_attention_collapse_is_flagged_by_attention_entropy(sd3, settings):
    req = resolve(GenerateRequest(deployment=sd3.name, prompt=PROMPTS[1], seed=12), sd3, settings.limits)
    with attention_fault(sd3, "text_key_scale", 8.0):
        report = PipelineRunner(sd3).generate(req, decode=False).report
    assert "attention_entropy" in report.flagged_detectors, report.flagged_detectors
    again = PipelineRunner(sd3).generate(req, decode=False).report
    assert again.verdict == "pass", again.flagged_detectors  # restored


def test_probes_off_or_other_probes_than_calibrated_drop_the_attention_detectors(caplog):
    off = load_deployment(
        DeploymentConfig(name="a", model="tiny-sd3", family="sd3", attention=AttentionConfig(enabled=False))
    )
    assert off.probe_layers == [] and not set(ATTENTION) & set(off.detectors)
    assert "spectral_residual" in off.detectors
    with caplog.at_level(logging.WARNING, logger="latentguard"):
        other = load_deployment(
            DeploymentConfig(
                name="b", model="tiny-sd3", family="sd3", attention=AttentionConfig(layers=[0, 1])
            )
        )
    assert other.probe_layers == [] and not set(ATTENTION) & set(other.detectors)
    assert "not calibrated with these attention probes" in caplog.text


def test_probe_layers_out_of_range_fail_at_load():
    with pytest.raises(ModelLoadError, match=r"must be in 0\.\.3"):
        fresh("tiny-sd3", "sd3", attention=AttentionConfig(layers=[4]))
