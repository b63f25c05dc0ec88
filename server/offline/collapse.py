"""A model whose outputs collapsed toward one: every request is drawn as if it asked for one prompt.

A stand-in for the diversity collapse of seed 000 (a LoRA or text-encoder fine-tune over-fitted to one
output, a conditioning path that stopped reading the prompt): each request still looks like a normal
picture, only the population lost its variety. The seed still varies the picture; the prompt no
longer does. Used by the drift evaluation and the Vendi tests.
"""

from __future__ import annotations

import copy
from typing import Any

from latentguard.server.pipelines.deployments import Deployment

PROMPT_KEYS = ("prompt", "prompt_2", "prompt_3")


def with_one_prompt(dep: Deployment, prompt: str) -> Deployment:
    """A copy of `dep` whose pipeline encodes `prompt` whatever prompt it is given."""
    changed = copy.copy(dep)
    changed.pipe = copy.copy(dep.pipe)
    encode = dep.pipe.encode_prompt

    def encode_one(*args: Any, **kwargs: Any) -> Any:
        for key in PROMPT_KEYS:
            given = kwargs.get(key)
            if isinstance(given, str):
                given = [given]
            if given is not None:  # empty prompts (FLUX's true-CFG negatives) stay empty
                kwargs[key] = [prompt if p else p for p in given]
        return encode(*args, **kwargs)

    changed.pipe.encode_prompt = encode_one
    return changed
