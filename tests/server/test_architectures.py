"""Production architectures through the path a user's checkpoint takes: tiny random-init diffusers
folders with the real config keys of SD3-medium (MMDiT), SD3.5-medium (MMDiT-X: dual_attention_layers,
qk_norm rms_norm), SD3.5-large (qk_norm), FLUX.1-dev (guidance_embeds) and FLUX.1-schnell, built here
from the built-ins' text stacks and VAE (seconds), loaded by folder; and the attention backends and
torch.compile modes they are served with."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline

from latentguard.detectors.attention import BLIND
from latentguard.oip.v2 import inference_pb2 as oip
from latentguard.server.config import CompileConfig, DeploymentConfig, Limits, Settings
from latentguard.server.offline.calibrate import calibrate_deployment
from latentguard.server.offline.trajectories import LocalCollector, default_prompts
from latentguard.server.pipelines.deployments import builtin_folder, load_deployment
from latentguard.server.pipelines.requests import GenerateRequest, resolve
from latentguard.server.pipelines.runner import PipelineRunner, initial_noise
from latentguard.server.rpc.client import InspectCallback, channel
from latentguard.v1 import guardrail_pb2 as pb
from latentguard.v1 import guardrail_pb2_grpc as pb_grpc

from .grpc_harness import ServerThread
from .test_oip import bytes_input, call, unpack

# name: (family, the production config keys that make the architecture, deployment settings)
ARCHITECTURES = {
    "sd3-medium": ("sd3", {"qk_norm": None, "dual_attention_layers": []}, {}),
    "sd3.5-medium": ("sd3", {"qk_norm": "rms_norm", "dual_attention_layers": [0, 1]}, {}),
    "sd3.5-large": ("sd3", {"qk_norm": "rms_norm", "dual_attention_layers": []}, {}),
    "flux.1-dev": ("flux", {"guidance_embeds": True}, {"guidance_scale": 3.5}),
    "flux.1-schnell": ("flux", {"guidance_embeds": False}, {"guidance_scale": 0.0}),
}
STEPS, SIDE, PROMPT = 4, 64, "a red circle on a blue background"


def build_folder(name: str, out) -> str:
    """A random-init transformer of the architecture (small widths, real structure: patch 2 for SD3)
    beside the built-in text encoders, tokenizers, VAE and scheduler, saved as a diffusers folder."""
    family, keys, _ = ARCHITECTURES[name]
    if family == "sd3":
        pipe = StableDiffusion3Pipeline.from_pretrained(builtin_folder("tiny-sd3"))
        config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
        config.update(num_layers=2, patch_size=2, attention_head_dim=16, num_attention_heads=2)
        config.update(caption_projection_dim=32, **keys)
        torch.manual_seed(0)
        pipe.transformer = SD3Transformer2DModel(**config)
    else:
        pipe = FluxPipeline.from_pretrained(builtin_folder("tiny-flux"))
        config = {k: v for k, v in pipe.transformer.config.items() if not k.startswith("_")}
        config.update(num_layers=1, num_single_layers=1, **keys)
        torch.manual_seed(0)
        pipe.transformer = FluxTransformer2DModel(**config)
    pipe.save_pretrained(out / name)
    return str(out / name)


def deployment_config(arch: str, folder: str, **updates) -> DeploymentConfig:
    """The config a user writes for the folder (name: the architecture's, unless `updates` says)."""
    family, _, settings = ARCHITECTURES[arch]
    fields = dict(
        name=arch, steps=STEPS, width=SIDE, height=SIDE, max_sequence_length=32, max_batch_delay_ms=0
    )
    return DeploymentConfig(model=folder, family=family, **{**fields, **settings, **updates})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = tmp_path_factory.mktemp("architectures")
    return {name: build_folder(name, out) for name in ARCHITECTURES}


def generate(dep, seed: int = 1):
    request = resolve(GenerateRequest(dep.config.name, PROMPT, seed), dep, Limits())
    return PipelineRunner(dep).generate(request).report


def test_the_folders_carry_the_production_keys(folders):
    for name, (_, keys, _) in ARCHITECTURES.items():
        with open(f"{folders[name]}/transformer/config.json") as f:
            config = json.load(f)
        for key, value in keys.items():
            assert config[key] == value, (name, key)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_calibrated_then_every_detector_and_every_step_is_guarded(name, folders, tmp_path):
    """Calibrated on benign runs of the folder (a looser target than production, so that it takes
    seconds: the count the 1% default needs is tested in test_calibration), then served with every
    detector active and attention statistics at every step."""
    dep = load_deployment(deployment_config(name, folders[name]))
    assert dep.profile is None and list(dep.detectors) == ["non_finite"]  # uncalibrated: says so
    assert dep.probe_layers
    profile = tmp_path / "profile.json"
    # 80 held-out runs: at 25% there is room for the 11 detectors (each flags its own highest run
    # even at its strictest threshold; at 20% the budget is 10)
    calibrate_deployment(LocalCollector(dep), default_prompts("calibration")[:60], 2, 0.25, profile)
    dep = load_deployment(deployment_config(name, folders[name], profile=str(profile)))
    assert {"attention_entropy", "attention_rank", "spectral_residual", "grain"} <= set(dep.detectors)
    report = generate(dep)
    assert report.steps_run == STEPS and report.profile_exact
    assert {d.name for d in report.detectors} == set(dep.detectors) and not any(
        d.error for d in report.detectors
    )
    assert all(s.attention_entropy is not None and s.attention_rank is not None for s in report.steps)


@pytest.mark.slow  # about 2.5 minutes each on 2 cores: `make test-slow`
@pytest.mark.parametrize("name", ["sd3.5-medium", "flux.1-dev"])
def test_the_cli_calibrates_a_users_folder_with_its_defaults(name, folders, tmp_path):
    """`latentguard calibrate` with nothing but the config, deployment and output: 1600 calibration
    prompts x 2 seeds at the 1% target, then the folder serves with every detector the profile holds."""
    import yaml
    from typer.testing import CliRunner

    from latentguard.server.cli import app

    config, profile = tmp_path / "config.yaml", tmp_path / "profile.json"
    dumped = deployment_config(name, folders[name]).model_dump(mode="json", exclude_defaults=True)
    config.write_text(yaml.safe_dump({"deployments": [dumped]}))
    args = ["calibrate", "--config", str(config), "--deployment", name, "--out", str(profile)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads(profile.read_text())["report"]
    assert written["target_fpr"] == 0.01 and written["fit_runs"] + written["calibration_runs"] == 3200
    dep = load_deployment(deployment_config(name, folders[name], profile=str(profile)))
    report = generate(dep)
    assert {d.name for d in report.detectors} == set(dep.detectors) and len(dep.detectors) >= 10
    assert all(s.attention_entropy is not None for s in report.steps)


@pytest.mark.slow  # about a minute: `make test-slow`
def test_init_writes_a_config_that_serves_the_folder_guarded(folders, tmp_path):
    """`latentguard init` on a FLUX.1-dev-like folder (a small prompt set and a loose target, so that it
    takes seconds): the config it writes loads the folder with its profile, drift reference and
    canaries, and a request is guarded by every detector with attention statistics at every step."""
    from typer.testing import CliRunner

    from latentguard.server.cli import app

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(default_prompts("calibration")[:260]) + "\n")
    out = tmp_path / "deploy" / "config.yaml"
    args = ["init", "--model", folders["flux.1-dev"], "--family", "flux", "--out", str(out)]
    args += ["--prompts", str(prompts), "--seeds", "1", "--fpr", "0.2", "--steps", str(STEPS)]
    args += ["--width", str(SIDE), "--height", str(SIDE), "--guidance-scale", "3.5", "--no-classifier"]
    result = CliRunner().invoke(app, [*args, "--null-windows", "100"])
    assert result.exit_code == 0, result.output
    assert "260 calibration runs and 260 drift-reference runs" in " ".join(result.output.split())
    settings = Settings.load(out)
    (cfg,) = settings.deployments
    dep = load_deployment(cfg)
    assert dep.profile is not None and dep.drift is not None and dep.canaries is not None
    report = generate(dep)
    assert {d.name for d in report.detectors} == set(dep.detectors) and "attention_entropy" in dep.detectors
    assert all(s.attention_entropy is not None for s in report.steps)


def test_a_softmax_scale_fault_after_the_qk_norm_moves_the_attention_statistics(folders):
    """SD3.5's q/k RMS-norm undoes a scale put on the queries before it (the images stay the same);
    after it, the softmax sees sharper attention, and so do the probes, which read the inputs of
    scaled_dot_product_attention."""
    dep = load_deployment(deployment_config("sd3.5-large", folders["sd3.5-large"]))
    blocks = dep.pipe.transformer.transformer_blocks
    clean = generate(dep)

    def scaled(module: torch.nn.Module, factor: float) -> list:
        return [module.register_forward_hook(lambda m, a, out: out * factor)]

    handles = [h for b in blocks for h in scaled(b.attn.to_q, 2.0)]  # before the norm
    before_norm = generate(dep)
    for h in handles:
        h.remove()
    handles = [h for b in blocks for h in scaled(b.attn.norm_q, 2.0)]  # after it: softmax scale x2
    after_norm = generate(dep)
    for h in handles:
        h.remove()
    entropy = lambda r: torch.tensor([s.attention_entropy for s in r.steps])  # noqa: E731
    torch.testing.assert_close(entropy(before_norm), entropy(clean), rtol=1e-4, atol=1e-5)
    assert (entropy(after_norm) < entropy(clean) - 0.01).all(), (entropy(after_norm), entropy(clean))


@pytest.fixture(scope="module")
def server(folders):
    deployments = [deployment_config(name, folder) for name, folder in folders.items()]
    srv = ServerThread(Settings(deployments=deployments, host="127.0.0.1", port=0, metrics_port=0)).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_served_over_grpc_oip_and_inspect(name, server, folders):
    stub = pb_grpc.GuardrailStub(channel(server.target))
    request = pb.GenerateRequest(deployment=name, prompt=PROMPT, seed=3)
    one = stub.Generate(request, timeout=60)
    assert one.report.steps_run == STEPS and one.image_png[:4] == b"\x89PNG"
    events = list(stub.GenerateStream(request, timeout=60))
    assert [e.step.step for e in events[:-1]] == list(range(STEPS)) and events[-1].HasField("result")
    infer = oip.ModelInferRequest(model_name=name, inputs=[bytes_input("prompt", PROMPT.encode())])
    outputs = call(server.target, "ModelInfer", infer)
    assert {o.name for o in outputs.outputs} >= {"image", "verdict", "report"}
    report = json.loads(
        unpack(outputs.raw_output_contents[[o.name for o in outputs.outputs].index("report")])
    )
    assert report["steps_run"] == STEPS
    # sidecar mode: the user's own pipeline of the same folder streams its latents through InspectCallback
    dep = load_deployment(deployment_config(name, folders[name]), with_profile=False)
    noise = initial_noise(dep, [5], SIDE, SIDE)
    callback = InspectCallback(server.target, name, dep.pipe, noise, SIDE, SIDE)
    dep.pipe(
        PROMPT,
        num_inference_steps=STEPS,
        latents=dep.family.to_pipeline(noise),
        output_type="latent",
        max_sequence_length=32,
        height=SIDE,
        width=SIDE,
        callback_on_step_end=callback,
        guidance_scale=dep.config.guidance_scale,
    )
    assert [v.step for v in callback.verdicts] == list(range(STEPS)) and callback.report.steps_run == STEPS


@pytest.mark.parametrize("name", ["sd3.5-medium", "flux.1-dev"])
def test_fp8_variant_and_a_lora_the_canaries_catch(name, folders, tmp_path):
    from latentguard.server.offline.lora import random_lora
    from latentguard.server.pipelines import canaries

    base = load_deployment(deployment_config(name, folders[name]))
    fp8 = load_deployment(deployment_config(name, folders[name], name="fp8", variant="fp8"))
    assert generate(fp8).steps_run == STEPS
    lora = random_lora(base, tmp_path / "lora", std=0.5)
    adapted = load_deployment(
        deployment_config(name, folders[name], name="lora", adapters=[{"name": "a", "path": str(lora)}])
    )
    runner = PipelineRunner(base)
    reference = canaries.record(runner, base.config.canaries.prompts[:1])
    same = canaries.run_round(runner, reference, 1e-3)
    changed = canaries.run_round(PipelineRunner(adapted), reference, 1e-3)
    assert not same.changed and changed.changed and changed.divergence > same.divergence


# --- attention backends and torch.compile -------------------------------------------------------


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_sdpa_backends_keep_the_probes_reading(backend, folders):
    name = "sd3.5-medium"
    plain = generate(load_deployment(deployment_config(name, folders[name])))
    dep = load_deployment(deployment_config(name, folders[name], attention_backend=backend))
    report = generate(dep)
    assert [s.attention_entropy for s in report.steps] == pytest.approx(
        [s.attention_entropy for s in plain.steps], rel=1e-4
    )


def test_a_backend_the_probes_cannot_read_fails_the_attention_detectors_open_and_says_so(caplog):
    """diffusers' flex backend does not call scaled_dot_product_attention: the shipped tiny-flux profile's
    attention detectors then fail open, with the reason in the report and the log, and the request is
    judged by the other detectors."""
    config = DeploymentConfig(
        name="flux-flex",
        model="tiny-flux",
        family="flux",
        attention_backend="flex",
        true_cfg_scale=3.0,
        guidance_scale=3.5,
        max_sequence_length=32,
        steps=4,
    )
    with caplog.at_level(logging.WARNING):
        report = generate(load_deployment(config))
    results = {d.name: d for d in report.detectors}
    for detector in ("attention_entropy", "attention_rank"):
        assert BLIND in results[detector].error and not results[detector].flagged
    assert not any(results[d].error for d in results if not d.startswith("attention"))
    assert report.verdict in ("pass", "flag") and report.steps_run == 4
    assert all(s.attention_entropy is None for s in report.steps)
    assert "is blind" in caplog.text and "flex" not in BLIND


def test_an_unknown_attention_backend_is_a_config_error():
    with pytest.raises(ValueError, match="attention_backend 'flash-attn'"):
        DeploymentConfig(name="a", model="tiny-sd3", family="sd3", attention_backend="flash-attn")


@pytest.mark.parametrize(
    ("name", "mode", "backend"),
    [
        ("flux.1-dev", "full", "eager"),
        ("flux.1-dev", "regional", "eager"),
        ("sd3.5-medium", "regional", "eager"),
        pytest.param("sd3.5-medium", "regional", "inductor", marks=pytest.mark.slow),  # C++ build: minutes
        pytest.param("flux.1-dev", "full", "inductor", marks=pytest.mark.slow),
    ],
)
def test_compiled_transformers_are_guarded_and_probed(name, mode, backend, folders):
    """torch.compile of the whole transformer or of each repeated block, by graph capture alone (the
    eager backend: inductor's tracing without its C++ build) and by inductor itself (make test-slow):
    the same latents as uncompiled (inductor reorders float arithmetic: within 1e-3), the guard on
    every step, the probes reading (their blocks' attention runs eagerly)."""
    plain = load_deployment(deployment_config(name, folders[name]))
    compiled = load_deployment(
        deployment_config(name, folders[name], compile=CompileConfig(mode=mode, backend=backend))
    )
    torch._dynamo.reset()
    a, b = (
        PipelineRunner(plain).denoise_at_defaults([PROMPT], [2]),
        PipelineRunner(compiled).denoise_at_defaults([PROMPT], [2]),
    )
    tol = {"rtol": 1e-3, "atol": 1e-3} if backend == "inductor" else {}
    torch.testing.assert_close(b.latents, a.latents, **tol)
    stats = b.guard.monitor.stacked()
    assert stats.attn_entropy is not None and stats.attn_entropy.shape[1] == STEPS
    torch.testing.assert_close(stats.attn_entropy, a.guard.monitor.stacked().attn_entropy, **tol)


def test_deployments_of_one_model_with_other_runtime_settings_do_not_share_its_transformer(folders):
    """A backend or compile setting changes the loaded transformer in place: a deployment of the same
    folder without them must not see it."""
    name = "flux.1-dev"
    flex = load_deployment(deployment_config(name, folders[name], attention_backend="flex"))
    plain = load_deployment(deployment_config(name, folders[name]))
    assert flex.pipe.transformer is not plain.pipe.transformer
    assert all(s.attention_entropy is not None for s in generate(plain).steps)
    assert all(s.attention_entropy is None for s in generate(flex).steps)
