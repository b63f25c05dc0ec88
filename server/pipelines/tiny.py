"""Built-in tiny deployments: the real SD3 and FLUX.1 pipeline classes with small configs.

Weights come from a fixed seed and tokenizers are built from in-memory vocabularies, so a text prompt
goes through the whole real pipeline (tokenizers, text encoders, transformer, scheduler, VAE) and
nothing is downloaded. The configs are small enough that a request takes well under a second on a
2-core CPU, but keep the real latent layout: 16 latent channels, 8x VAE downsampling, FLUX packing.
"""

from __future__ import annotations

import string

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

TINY_SEED = 0
LATENT_CHANNELS = 16
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 64

# Printable ASCII is enough for prompts; anything else falls back to the unknown token.
_ALPHABET = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation


def clip_tokenizer() -> CLIPTokenizer:
    """Character-level byte-BPE vocabulary (no merges): every ASCII prompt tokenizes."""
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in _ALPHABET:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    """Character-level unigram vocabulary; pieces starting a word carry SentencePiece's '▁'."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + ch, -3.0) for ch in _ALPHABET] + [(ch, -4.0) for ch in _ALPHABET]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _clip_config(projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(clip_tokenizer()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=projection_dim,
        max_position_embeddings=CLIP_MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )


def _t5_encoder() -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(t5_tokenizer()),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return T5EncoderModel(config)


def _vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=256,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def _inference_mode(pipe):
    """Modules built from a config start in training mode (dropout on); from_pretrained would eval()."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipe


def tiny_sd3(num_layers: int = 2, attention_head_dim: int = 16) -> StableDiffusion3Pipeline:
    """The built-in tiny SD3; benchmarks widen it (more layers, wider heads) to get realistic step times."""
    torch.manual_seed(TINY_SEED)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        num_layers=num_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=4 * attention_head_dim,
        pooled_projection_dim=64,
        out_channels=LATENT_CHANNELS,
        pos_embed_max_size=64,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=CLIPTextModelWithProjection(_clip_config(32)),
        tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(32)),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5_encoder(),
        tokenizer_3=t5_tokenizer(),
    )
    return _inference_mode(pipe)


def tiny_flux() -> FluxPipeline:
    torch.manual_seed(TINY_SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=CLIPTextModel(_clip_config(32)),
        tokenizer=clip_tokenizer(),
        text_encoder_2=_t5_encoder(),
        tokenizer_2=t5_tokenizer(),
    )
    return _inference_mode(pipe)
