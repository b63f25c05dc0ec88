"""Train the built-in tiny SD3 and FLUX.1 models from scratch on this machine: `make train`.

    python training/train.py [--stages vae,latents,sd3,flux,export] [--work training/work] [--quick]

Stages, in order; each is resumable (outputs and checkpoints under --work, which git ignores), so an
interrupted run picks up where it stopped:

  vae      AutoencoderKL on random 128 x 128 crops of rendered scenes (flips), L1 + 1e-6 KL
  latents  --images scenes of the "train" caption split rendered at 256 x 256 and encoded (posterior
           mean); the VAE's shift_factor / scaling_factor are set from their mean and std, as SD3 /
           FLUX do; the captions are kept as text and encoded at every step by the text stack in training
  sd3      SD3Transformer2DModel and its text encoders, rectified flow: x_t = (1 - s) x0 + s e,
           target v = e - x0, s ~ logit-normal(mu, 1) as in SD3, 10% of captions dropped to ""
           (classifier-free guidance). mu puts training where the pipeline samples (sigma_shift below);
           the loss weighs latent pixels under a shape 1 + shape_weight (the shapes are a small part of
           the picture, and without the weight the model painted colour without shapes)
  flux     FluxTransformer2DModel and its text encoders, the same on 2 x 2-packed latents (with round 1's
           rotary axes the same recipe measured worse: architecture.flux_transformer, README)

The text encoders train with the denoiser. Production pipelines freeze theirs because they arrive
pretrained and meaningful; seeded random encoders carry the words, but the denoiser did not learn to
read them through frozen random features in the time budget (measured: after 3500 steps with frozen
encoders, the right and shuffled captions gave the same x0 error at high noise, 0.703 vs 0.709).
  export   diffusers folders (safetensors only, EMA weights) into server/pipelines/builtin/<name>/

`--quick` shrinks every stage (a smoke run of the whole path in a few minutes). Uses every core
torch sees; set OMP_NUM_THREADS to share the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).parent))
import architecture

from latentguard.server.offline.scenes import render, sample_scenes, shape_mask

ROOT = Path(__file__).parent.parent
BUILTIN = ROOT / "server" / "pipelines" / "builtin"
console = Console(stderr=True)


@dataclass(frozen=True)
class Plan:
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_pool: int = 3000
    images: int = 20000
    sd3_steps: int = 16000
    flux_steps: int = 16000
    batch: int = 32
    lr: float = 4e-4
    cfg_dropout: float = 0.1
    shape_weight: float = 4.0  # extra loss weight on latent pixels the shapes cover (train_transformer)
    # Families trained with round 2's recipe (shifted sigmas, shape weight); the others get round 1's
    # (unshifted sigmas, plain MSE), kept to reproduce the comparisons in the README (Built-in models).
    round2: tuple[str, ...] = ("sd3", "flux")
    checkpoint_every: int = 250
    export_to: Path = BUILTIN

    @staticmethod
    def quick(work: Path) -> Plan:
        return Plan(
            vae_steps=60,
            vae_pool=64,
            images=256,
            sd3_steps=60,
            flux_steps=60,
            checkpoint_every=25,
            export_to=work / "builtin",
        )


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def log_plain(stage: str, step: int, total: int, loss: float) -> None:
    """A line per checkpoint when the output is not a terminal (the progress bar only draws on one)."""
    if not console.is_terminal:
        console.print(f"{time.strftime('%H:%M:%S')} {stage}: step {step}/{total}, loss {loss:.4f}")


def save_atomic(obj: object, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def lr_at(step: int, total: int, peak: float, warmup: int = 250) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


# --- vae -----------------------------------------------------------------------------------------
def train_vae(work: Path, plan: Plan) -> None:
    out = work / "vae"
    if (out / "config.json").is_file():
        console.print("vae: done already")
        return
    torch.manual_seed(architecture.SEED)
    vae = architecture.vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ckpt_path, step, losses = work / "vae.ckpt", 0, []
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, losses = ckpt["step"], ckpt["losses"]
    scenes = sample_scenes(plan.vae_pool, seed=1, split="train")
    with console.status(f"vae: rendering a pool of {len(scenes)} scenes"):
        pool = torch.from_numpy(np.stack([np.asarray(render(s, 256, seed=i)) for i, s in enumerate(scenes)]))
    gen = torch.Generator().manual_seed(step)
    running = None
    with progress() as bar:
        task = bar.add_task("vae", total=plan.vae_steps, completed=step, info="")
        while step < plan.vae_steps:
            idx = torch.randint(len(pool), (plan.vae_batch,), generator=gen)
            oy, ox = torch.randint(0, 129, (2,), generator=gen).tolist()
            x = pool[idx, oy : oy + 128, ox : ox + 128].permute(0, 3, 1, 2).float() / 127.5 - 1
            flip = torch.rand(plan.vae_batch, generator=gen) < 0.5
            x[flip] = x[flip].flip(-1)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, plan.vae_steps, 1e-3, warmup=100)
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
            loss = F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            step += 1
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if step % 50 == 0:
                losses.append((step, running))
            bar.update(task, completed=step, info=f"loss {running:.4f}")
            if step % plan.checkpoint_every == 0 or step == plan.vae_steps:
                save_atomic(
                    {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step, "losses": losses},
                    ckpt_path,
                )
                log_plain("vae", step, plan.vae_steps, running)
    vae.eval().save_pretrained(out, safe_serialization=True)
    (work / "vae_losses.json").write_text(json.dumps(losses))


# --- latents and captions ------------------------------------------------------------------------
def encode_latents(work: Path, plan: Plan) -> None:
    out = work / "latents.pt"
    if out.is_file():
        console.print("latents: done already")
        return
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    scenes = sample_scenes(plan.images, seed=2, split="train")
    parts, masks = [], []
    with progress() as bar, torch.inference_mode():
        task = bar.add_task("latents", total=len(scenes), info="render + encode")
        for i in range(0, len(scenes), 64):
            batch = scenes[i : i + 64]
            images = [render(s, 256, seed=i + j) for j, s in enumerate(batch)]
            x = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1
            parts.append(vae.encode(x).latent_dist.mean.half())
            shapes = [shape_mask(s, im) for s, im in zip(batch, images, strict=True)]
            mask = torch.from_numpy(np.stack(shapes))
            masks.append(F.max_pool2d(mask[:, None].float(), 8)[:, 0].bool())  # per latent pixel
            bar.advance(task, len(batch))
    latents = torch.cat(parts)
    shift = float(latents.float().mean())
    scale = float(1 / latents.float().std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    vae.save_pretrained(work / "vae_final", safe_serialization=True)
    captions = [s.caption() for s in scenes]
    save_atomic({"latents": latents, "shape_masks": torch.cat(masks), "captions": captions}, out)
    console.print(f"latents: {tuple(latents.shape)}, shift_factor {shift:.4f}, scaling_factor {scale:.4f}")


TEXT_ENCODERS = {
    "sd3": ("text_encoder", "text_encoder_2", "text_encoder_3"),
    "flux": ("text_encoder", "text_encoder_2"),
}


def encode(pipe, family: str, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence, pooled) embeddings exactly as the pipeline computes them, with gradients."""
    if family == "sd3":
        seq, _, pooled, _ = pipe.encode_prompt(
            captions,
            None,
            None,
            do_classifier_free_guidance=False,
            max_sequence_length=architecture.T5_MAX_LENGTH,
        )
    else:
        seq, pooled, _ = pipe.encode_prompt(captions, None, max_sequence_length=architecture.T5_MAX_LENGTH)
    return seq, pooled


# --- transformers --------------------------------------------------------------------------------
def build_pipeline(family: str, work: Path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(work / "vae_final").eval()
    return architecture.sd3_pipeline(vae) if family == "sd3" else architecture.flux_pipeline(vae)


def trainable(pipe, family: str) -> torch.nn.ModuleDict:
    """The denoiser and the text encoders: trained together (see the module docstring)."""
    return torch.nn.ModuleDict(
        {"transformer": pipe.transformer, **{n: getattr(pipe, n) for n in TEXT_ENCODERS[family]}}
    )


def sigma_shift(pipe, latent_side: int) -> float:
    """The mean of the logit-normal sigma distribution: the shift the pipeline's own scheduler applies.

    Both schedulers shift sigma in logit space: SD3's `shift` s maps sigma to s*sigma / (1 + (s-1)*sigma),
    which is logit(sigma) + log(s); FLUX's dynamic shift exp(mu) (mu from the token count) adds mu.
    SD3 and FLUX train on the shifted sigmas (SD3 paper, section 5.3.2; diffusers' training scripts draw
    from the scheduler's shifted timesteps). Training on unshifted logit-normal(0, 1) left the sampler's
    high-noise steps, where the layout is decided, almost unseen: the trained models never put a stripe
    or a placed shape where the caption says at sigma 0.99 (spatial correlation with the true x0: 0.03-0.2).
    """
    config = pipe.scheduler.config
    if not config.use_dynamic_shifting:
        return math.log(config.shift)
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    tokens = (latent_side // 2) ** 2  # FLUX packs 2 x 2 latent pixels into a token
    return calculate_shift(
        tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )


def train_transformer(family: str, work: Path, plan: Plan) -> None:
    out = work / f"{family}_trained"
    if (out / "transformer" / "config.json").is_file():
        console.print(f"{family}: done already")
        return
    total = plan.sd3_steps if family == "sd3" else plan.flux_steps
    pipe = build_pipeline(family, work)
    data = torch.load(work / "latents.pt", weights_only=False)
    captions = data["captions"]
    vae_cfg = pipe.vae.config
    latents = data["latents"]
    if "shape_masks" not in data:
        raise SystemExit(f"{work / 'latents.pt'} predates shape masks: delete it and rerun the latents stage")
    weight_by_mask = plan.shape_weight if family in plan.round2 else 0.0
    shape_weight = 1 + weight_by_mask * data["shape_masks"].float()[:, None]  # [N, 1, h, w]
    model = trainable(pipe, family).requires_grad_(True)
    model.eval()  # no dropout (the text encoders have some); gradients flow all the same
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ckpt_path, step, losses = work / f"{family}.ckpt", 0, []
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        step, losses = ckpt["step"], ckpt["losses"]
    gen = torch.Generator().manual_seed(1000 + step)
    n = len(latents)
    img_ids = FluxPipelineIds.image(latents.shape[-2], latents.shape[-1]) if family == "flux" else None
    txt_ids = torch.zeros(architecture.T5_MAX_LENGTH, 3) if family == "flux" else None
    mu = sigma_shift(pipe, latents.shape[-1]) if family in plan.round2 else 0.0
    running = None
    with progress() as bar:
        task = bar.add_task(family, total=total, completed=step, info="")
        while step < total:
            idx = torch.randint(n, (plan.batch,), generator=gen)
            x0 = (latents[idx].float() - vae_cfg.shift_factor) * vae_cfg.scaling_factor
            noise = torch.randn(x0.shape, generator=gen)
            sigma = torch.sigmoid(torch.randn(plan.batch, generator=gen) + mu)
            s = sigma.view(-1, 1, 1, 1)
            x_t = (1 - s) * x0 + s * noise
            target = noise - x0
            drop = (torch.rand(plan.batch, generator=gen) < plan.cfg_dropout).tolist()
            seq, pooled = encode(
                pipe, family, ["" if d else captions[i] for d, i in zip(drop, idx.tolist(), strict=True)]
            )
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, plan.lr)
            if family == "sd3":
                pred = pipe.transformer(
                    hidden_states=x_t,
                    encoder_hidden_states=seq,
                    pooled_projections=pooled,
                    timestep=sigma * 1000,
                    return_dict=False,
                )[0]
            else:
                pred = pipe.transformer(
                    hidden_states=FluxPipelineIds.pack(x_t),
                    encoder_hidden_states=seq,
                    pooled_projections=pooled,
                    timestep=sigma,
                    img_ids=img_ids,
                    txt_ids=txt_ids,
                    guidance=None,
                    return_dict=False,
                )[0]
                target = FluxPipelineIds.pack(target)
            weight = shape_weight[idx].expand(x0.shape)
            if family == "flux":
                weight = FluxPipelineIds.pack(weight)
            loss = (weight * (pred - target) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - decay)
            running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
            if step % 50 == 0:
                losses.append((step, running))
            bar.update(task, completed=step, info=f"loss {running:.4f}")
            if step % plan.checkpoint_every == 0 or step == total:
                state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
                save_atomic({**state, "step": step, "losses": losses}, ckpt_path)
                log_plain(family, step, total, running)
    for name, module in ema.items():  # the EMA weights are what ships
        module.save_pretrained(out / name, safe_serialization=True)
    (work / f"{family}_losses.json").write_text(json.dumps(losses))


class FluxPipelineIds:
    """FLUX's 2 x 2 packing and image position ids, from the pipeline class itself."""

    @staticmethod
    def pack(x: torch.Tensor) -> torch.Tensor:
        from diffusers import FluxPipeline

        b, c, h, w = x.shape
        return FluxPipeline._pack_latents(x, b, c, h, w)

    @staticmethod
    def image(h: int, w: int) -> torch.Tensor:
        from diffusers import FluxPipeline

        return FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, "cpu", torch.float32)


# --- export --------------------------------------------------------------------------------------
def export(work: Path, plan: Plan) -> None:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    plan_fields = {k: v for k, v in plan.__dict__.items() if k != "export_to"}
    summary = {"plan": plan_fields, "vae_losses": json.loads((work / "vae_losses.json").read_text())}
    for family, cls in (("sd3", SD3Transformer2DModel), ("flux", FluxTransformer2DModel)):
        trained = work / f"{family}_trained"
        if not trained.is_dir():  # `--stages sd3,export` retrains and ships one family
            summary[f"{family}_losses"] = json.loads((plan.export_to / "training.json").read_text())[
                f"{family}_losses"
            ]
            console.print(f"export: tiny-{family} not trained under {work}, left as it is")
            continue
        pipe = build_pipeline(family, work)
        modules = {"transformer": cls.from_pretrained(trained / "transformer").eval()}
        for name in TEXT_ENCODERS[family]:
            modules[name] = type(getattr(pipe, name)).from_pretrained(trained / name).eval()
        pipe.register_modules(**modules)
        target = plan.export_to / f"tiny-{family}"
        pipe.save_pretrained(target, safe_serialization=True)
        for config in target.rglob("config.json"):  # from_pretrained records this machine's work folder
            data = json.loads(config.read_text())
            if data.pop("_name_or_path", None) is not None:
                config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        summary[f"{family}_losses"] = json.loads((work / f"{family}_losses.json").read_text())
        console.print(f"export: wrote {target}")
    (plan.export_to / "training.json").write_text(json.dumps(summary, indent=1) + "\n")


STAGES = {
    "vae": train_vae,
    "latents": encode_latents,
    "sd3": lambda work, plan: train_transformer("sd3", work, plan),
    "flux": lambda work, plan: train_transformer("flux", work, plan),
    "export": export,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--quick", action="store_true", help="a few steps of every stage (smoke test)")
    args = parser.parse_args()
    plan = Plan.quick(args.work) if args.quick else Plan()
    args.work.mkdir(parents=True, exist_ok=True)
    random.seed(architecture.SEED)
    for name in args.stages.split(","):
        if name not in STAGES:
            parser.error(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        start = time.time()
        STAGES[name](args.work, plan)
        console.print(f"[bold]{name}[/bold] finished in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
