"""The built-in tiny SD3 and FLUX.1 models before training: the real diffusers / transformers classes
with small configs, a text stack built in memory, and seeded initial weights.

The tokenizers are built here once and shipped as they are: character-level fallback plus whole-word
tokens for the scene grammar's vocabulary (a byte-pair vocabulary trained on the
grammar's captions with the `tokenizers` library, as CLIP's own was; word pieces for T5's unigram
model), so every caption of the grammar becomes one token per word and any other ASCII prompt still
tokenizes. The text encoders start from the seeded weights below and train with the denoiser
(training/train.py says why).
"""

from __future__ import annotations

import json
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
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from latentguard.server.offline.scenes import VOCABULARY, sample_scenes

SEED = 0
LATENT_CHANNELS = 16
CLIP_MAX_LENGTH = 32
T5_MAX_LENGTH = 32  # the deployments' max_sequence_length
ALPHABET = string.ascii_lowercase + string.digits + string.punctuation
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""  # CLIP's pre-tokenizer


def clip_tokenizer() -> CLIPTokenizer:
    """Byte-pair vocabulary learned on grammar captions: grammar words are single tokens."""
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True)
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=list(ALPHABET),
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    captions = [s.caption() for s in sample_scenes(2000, seed=SEED)] + [" ".join(VOCABULARY)] * 20
    bpe.train_from_iterator(captions, trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    # The trainer numbers the word-final characters it found by count, ties in a different order in every
    # process (measured: "a</w>" got 79, 82 or 83); number them by character so the vocabulary is the same
    # in every process: a run resumed in a new process must see the token ids it trained on.
    finals = sorted(t for t in vocab if len(t) == 1 + len("</w>") and t.endswith("</w>"))
    vocab.update(zip(finals, sorted(vocab[t] for t in finals), strict=True))
    for ch in ALPHABET:  # every character can end a word
        vocab.setdefault(ch + "</w>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    """Unigram pieces: grammar words whole (scored so they win), characters as the fallback.
    Case-sensitive like T5's own (CLIP's lowercases)."""
    chars = string.ascii_uppercase + ALPHABET
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in VOCABULARY]
    pieces += [("▁" + ch, -3.0) for ch in chars] + [(ch, -4.0) for ch in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _clip_config(vocab_size: int, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
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


def _t5_encoder(vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    return T5EncoderModel(config)


def vae() -> AutoencoderKL:
    """8x downsampling, 16 latent channels, like SD3 / FLUX; scaling and shift are set from the data."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=256,
        scaling_factor=1.0,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def sd3_transformer() -> SD3Transformer2DModel:
    """Patch 4: a token is 32 x 32 pixels, an 8 x 8 grid at 256 px (measured: patch 2 learned colour as
    scattered blocks, 17.5% foreground colour after 6000 steps against 43-47% with patch 4, at a third of
    the cost per step). sample_size 128 with pos_embed_max_size 32 gives positions one unit apart (base
    size 32) and allows up to 1024 px; the deployments pass their height and width."""
    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=4,
        in_channels=LATENT_CHANNELS,
        num_layers=4,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=64,
        pooled_projection_dim=64,
        out_channels=LATENT_CHANNELS,
        pos_embed_max_size=32,
    )


def flux_transformer() -> FluxTransformer2DModel:
    """FLUX's image tokens get their position only from rotary embeddings (no absolute embedding).
    diffusers' FluxPosEmbed fixes theta at 10000, so an axis of d dims rotates at 10000^(-2i/d) rad per
    token: axes (4, 14, 14) give each image axis seven frequencies (1, 0.27, 0.07, 0.02 ...), two of them
    turning 1-4 rad across the 16-token side. The first axis is FLUX's text/index axis (all zeros here,
    as in FLUX). Head dim = sum of the axes, so 2 heads x 32 keep the width at 64."""
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=3,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=(4, 14, 14),
    )


def _eval(pipe):
    """Modules built from a config start in training mode (dropout on); from_pretrained would eval()."""
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe


def sd3_pipeline(autoencoder: AutoencoderKL) -> StableDiffusion3Pipeline:
    torch.manual_seed(SEED)
    clip = clip_tokenizer()
    t5 = t5_tokenizer()
    return _eval(
        StableDiffusion3Pipeline(
            transformer=sd3_transformer(),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=autoencoder,
            text_encoder=CLIPTextModelWithProjection(_clip_config(len(clip), 32)),
            tokenizer=clip,
            text_encoder_2=CLIPTextModelWithProjection(_clip_config(len(clip), 32)),
            tokenizer_2=clip,
            text_encoder_3=_t5_encoder(len(t5)),
            tokenizer_3=t5,
        )
    )


def flux_pipeline(autoencoder: AutoencoderKL) -> FluxPipeline:
    torch.manual_seed(SEED)
    clip = clip_tokenizer()
    t5 = t5_tokenizer()
    return _eval(
        FluxPipeline(
            transformer=flux_transformer(),
            scheduler=FlowMatchEulerDiscreteScheduler(
                use_dynamic_shifting=True,
                base_shift=0.5,
                max_shift=1.15,
                base_image_seq_len=256,
                max_image_seq_len=4096,
            ),
            vae=autoencoder,
            text_encoder=CLIPTextModel(_clip_config(len(clip), 32)),
            tokenizer=clip,
            text_encoder_2=_t5_encoder(len(t5)),
            tokenizer_2=t5,
        )
    )
