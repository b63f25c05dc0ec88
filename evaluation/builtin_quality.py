"""Quality of the built-in models: do the pictures match their prompts? `make quality`.

    python evaluation/builtin_quality.py [--prompts 240] [--deployments tiny-sd3,tiny-flux]

For each built-in deployment: `--prompts` captions of the scene grammar's "evaluation" split (never
trained on), one seed each, generated exactly as the service does (the deployment's default steps,
size and guidance, through PipelineRunner). Each image is measured by `scenes.classify_colours`:
the background colour (the most common colour on the border) must be one of the prompt's background
colours, the foreground colour (the most common other colour) the prompt's shape colour; on the prompts
that place their one shape, `scenes.position_matches` checks the layout (the shape colour's centroid in
the named ninth). The same instrument on the ground-truth renders of the same captions is reported as
its own accuracy.
Also: the wall time of one 12-step 256 x 256 request (median of 9), guard and decode included.

Writes evaluation/builtin-quality.{md,json}, a sample grid docs/assets/builtin-samples.png, and the
model card server/pipelines/builtin/README.md (training figures from training.json next to it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import textwrap
import time
from pathlib import Path

from PIL import Image, ImageDraw

from latentguard.server.config import Settings
from latentguard.server.offline.scenes import Scene, colours_match, parse, position_matches, prompts, render
from latentguard.server.pipelines.deployments import builtin_folder, load_deployment
from latentguard.server.pipelines.requests import GenerateRequest, resolve
from latentguard.server.pipelines.runner import PipelineRunner

HERE = Path(__file__).parent
CARD = builtin_folder("tiny-sd3").parent / "README.md"
BATCH = 8


def generate_all(dep, captions: list[str]) -> list[Image.Image]:
    runner, images = PipelineRunner(dep), []
    for i in range(0, len(captions), BATCH):
        chunk = captions[i : i + BATCH]
        run = runner.denoise_at_defaults(chunk, list(range(i, i + len(chunk))))
        images += dep.family.decode(dep.pipe, run.latents)
        print(f"  {dep.name}: {len(images)}/{len(captions)}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return images


def request_seconds(dep, caption: str, repeats: int = 9) -> float:
    runner = PipelineRunner(dep)
    req = resolve(GenerateRequest(dep.name, caption, seed=1), dep, Settings().limits)
    runner.generate(req)  # warm
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner.generate(req)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def accuracy(scenes: list[Scene], images: list[Image.Image]) -> dict[str, float]:
    """Background and foreground colour over every scene, position over those that place their shape."""
    hits = [colours_match(sc, im) for sc, im in zip(scenes, images, strict=True)]
    placed = [position_matches(sc, im) for sc, im in zip(scenes, images, strict=True) if sc.position]
    return {
        "background": sum(b for b, _ in hits) / len(hits),
        "foreground": sum(f for _, f in hits) / len(hits),
        "position": sum(placed) / len(placed),
    }


def grid(rows: dict[str, list[Image.Image]], captions: list[str], size: int = 128) -> Image.Image:
    cols = len(captions)
    sheet = Image.new("RGB", (cols * size, (len(rows) + 1) * size + 40), "white")
    draw = ImageDraw.Draw(sheet)
    for c, caption in enumerate(captions):
        sheet.paste(render(parse(caption), size), (c * size, 0))
        draw.text((c * size + 2, (len(rows) + 1) * size + 2), str(c + 1), fill="black")
    for r, (_, images) in enumerate(rows.items(), start=1):
        for c, im in enumerate(images[:cols]):
            sheet.paste(im.resize((size, size)), (c * size, r * size))
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=240)
    parser.add_argument("--deployments", default="tiny-sd3,tiny-flux")
    parser.add_argument("--no-card", action="store_true", help="do not rewrite the model card")
    args = parser.parse_args()
    captions = prompts(args.prompts, "evaluation", seed=7)
    scenes = [parse(c) for c in captions]
    truth = [render(sc, 256, seed=i) for i, sc in enumerate(scenes)]
    results = {
        "prompts": len(captions),
        "placed": sum(bool(sc.position) for sc in scenes),
        "placed_in_center": sum(sc.position == "in the center" for sc in scenes),
        "instrument": accuracy(scenes, truth),
    }
    samples: dict[str, list[Image.Image]] = {}
    for name in args.deployments.split(","):
        dep = load_deployment(Settings().deployment(name), with_profile=False)
        images = generate_all(dep, captions)
        results[name] = {**accuracy(scenes, images), "request_seconds": request_seconds(dep, captions[0])}
        samples[name] = images
        r = results[name]
        print(
            f"{name}: background {r['background']:.3f}, foreground {r['foreground']:.3f}, "
            f"position {r['position']:.3f}, {r['request_seconds']:.3f} s/request",
            file=sys.stderr,
        )
    (HERE / "builtin-quality.json").write_text(json.dumps(results, indent=1) + "\n")
    shown = captions[:10]
    grid(samples, shown).save(HERE.parent / "docs" / "assets" / "builtin-samples.png")
    (HERE / "builtin-quality.md").write_text(
        table(results, args.deployments.split(",")) + "\n" + legend(shown)
    )
    if not args.no_card:
        CARD.write_text(model_card(results))
    print(table(results, args.deployments.split(",")))


def table(results: dict, names: list[str]) -> str:
    lines = [
        f"Measured on {results['prompts']} evaluation-split prompts, one seed each "
        "(`make quality`, evaluation/builtin_quality.py):",
        "",
        "| | background colour matches | foreground colour matches "
        f"| position matches ({results['placed']} prompts place their shape) "
        "| one 12-step 256 x 256 request |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        r = results[name]
        lines.append(
            f"| {name} | {r['background']:.1%} | {r['foreground']:.1%} | {r['position']:.1%} "
            f"| {r['request_seconds']:.2f} s |"
        )
    inst = results["instrument"]
    lines.append(
        f"| ground-truth renders (the instrument itself) | {inst['background']:.1%} "
        f"| {inst['foreground']:.1%} | {inst['position']:.1%} | |"
    )
    return "\n".join(lines) + "\n"


def legend(captions: list[str]) -> str:
    return (
        "Sample grid (docs/assets/builtin-samples.png), top row the ground-truth render, "
        "then one row per model:\n\n" + "\n".join(f"{i + 1}. {c}" for i, c in enumerate(captions)) + "\n"
    )


def transformer_config(name: str) -> dict:
    return json.loads((builtin_folder(name) / "transformer" / "config.json").read_text())


def heads(config: dict) -> str:
    return f"{config['num_attention_heads']} heads x {config['attention_head_dim']}"


# The mean of the logit-normal noise levels round 2 trains on: the shift each scheduler samples with
# (training/train.py, sigma_shift)
ROUND2_SHIFT = {"sd3": "ln 3, its scheduler's shift", "flux": "0.5, FLUX's dynamic shift at 256 image tokens"}


def recipes(plan: dict, final: dict) -> str:
    """The model card's Recipes item, wrapped."""
    round2 = [f for f in ("sd3", "flux") if f in plan["round2"]]
    round1 = [f for f in ("sd3", "flux") if f not in plan["round2"]]
    text = [
        f"tiny-{f}: s logit-normal with mean {ROUND2_SHIFT[f]} (training sees the noise levels the "
        f"sampler spends its steps on), the loss on latent pixels under a shape weighted "
        f"1 + {plan['shape_weight']:g}."
        for f in round2
    ]
    text += [
        f"tiny-{f}: s logit-normal(0, 1) and plain MSE (round 1's recipe; the round-1 model learned "
        "colours but no layout)."
        for f in round1
    ]
    text.append(f"Final training loss (running mean) SD3 {final['sd3']:.4f}, FLUX {final['flux']:.4f}.")
    return textwrap.fill("- Recipes: " + " ".join(text), width=100, subsequent_indent="  ")


def model_card(results: dict) -> str:
    training = json.loads((CARD.parent / "training.json").read_text())
    plan = training["plan"]
    final = {k: training[f"{k}_losses"][-1][1] for k in ("vae", "sd3", "flux")}
    names = [n for n in ("tiny-sd3", "tiny-flux") if n in results]
    sd3, flux = (transformer_config(f"tiny-{f}") for f in ("sd3", "flux"))
    settings = Settings()
    sd3_guidance = settings.deployment("tiny-sd3").guidance_scale
    flux_cfg = settings.deployment("tiny-flux").true_cfg_scale
    placed, center = results["placed"], results["placed_in_center"]
    return f"""# Built-in models: tiny-sd3 and tiny-flux

Two diffusers checkpoints, trained from scratch on this project's machine (2 CPU cores) by
`make train` (training/train.py; architectures in training/architecture.py). Each folder is a
complete diffusers pipeline (`model_index.json`, safetensors only) and loads with
`StableDiffusion3Pipeline.from_pretrained` / `FluxPipeline.from_pretrained`, the same path a
production checkpoint takes. Both were trained at 256 x 256: pass `height=256, width=256` (the pipelines'
own default is 1024 for both; the deployments pass their configured size).

## Data

Procedural scenes drawn from a seed (latentguard/server/offline/scenes.py documents the caption
grammar): one to three shapes (circle, square, triangle, diamond, star) of one of 11 colours, three
sizes, nine positions, on a solid, gradient or striped background of other colours, rendered at
256 x 256 with anti-aliasing. Captions are split by a stable hash into train (80%), calibration (10%)
and evaluation (10%); the models saw train captions only ({plan["images"]} images).

## Models

- VAE: `AutoencoderKL`, 16 latent channels, 8x downsampling, shared by both pipelines. L1 + 1e-6 KL
  on 128 x 128 crops, {plan["vae_steps"]} steps of {plan["vae_batch"]}; final L1 {final["vae"]:.4f}
  (on [-1, 1] pixels). `shift_factor` / `scaling_factor` are the mean and 1 / std of the training
  latents, as SD3 / FLUX set them.
- Text: CLIP-L/G-shaped and T5-shaped encoders from seeded weights, trained with the denoiser (frozen
  random encoders did not condition in the time budget; training/train.py); tokenizers built in
  memory (byte-pair vocabulary learned on the grammar's captions for CLIP, word pieces for T5) so every
  grammar word is one token and any ASCII prompt still tokenizes. 32 tokens each.
- `SD3Transformer2DModel` ({sd3["num_layers"]} joint blocks, {heads(sd3)}, patch {sd3["patch_size"]}: one
  token is {8 * sd3["patch_size"]} x {8 * sd3["patch_size"]} pixels) and `FluxTransformer2DModel`
  ({flux["num_layers"]} double + {flux["num_single_layers"]} single blocks, {heads(flux)}, rotary axes
  {tuple(flux["axes_dims_rope"])}, 2 x 2 packing: 16 x 16 pixels),
  rectified flow (x_t = (1 - s) x0 + s e, target e - x0), {plan["cfg_dropout"]:.0%} of captions dropped
  for classifier-free guidance, AdamW, batch {plan["batch"]}, {plan["sd3_steps"]} / {plan["flux_steps"]}
  steps, EMA weights shipped.
{recipes(plan, final)}
- Sampling (the deployments' defaults, which `make quality` uses): 12 steps at 256 x 256; tiny-sd3
  with `guidance_scale` {sd3_guidance:g}. tiny-flux has no guidance embedding (FLUX.1-dev's is
  distilled from a teacher we do not have), so it guides by true classifier-free guidance against an
  empty negative prompt: `FluxPipeline(..., true_cfg_scale={flux_cfg:g}, negative_prompt="")`, a
  second transformer call per step (the deployment's `true_cfg_scale`, chosen on calibration-split
  prompts).

## Measured quality

{table(results, names)}
Loss curves: training.json. The position column's chance level: colour scattered over the whole
image centres in the middle, which is right only for the {center} of {placed} placed prompts that say
"in the center" ({center / placed:.1%}). Shapes and counts are not measured. Prompts outside the
grammar tokenize and run, but the models have no notion of them.
"""


if __name__ == "__main__":
    main()
