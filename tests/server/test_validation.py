"""Every bad input gets one typed error with a clear message."""

import pytest

from latentguard.server.errors import InvalidArgument
from latentguard.server.pipelines.requests import GenerateRequest, resolve


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 2001}, "limit is 2000"),
        ({"seed": -1}, "seed must be"),
        ({"seed": 2**63}, "seed must be"),
        ({"steps": -1}, "steps must be in"),
        ({"steps": 101}, "steps must be in"),
        ({"width": 250}, "multiple of 32"),
        ({"height": 100}, "multiple of 32"),
        ({"height": 272}, "multiple of 32"),  # VAE factor 8 x the transformer's patch 4, not 8 x 2
        ({"width": -16}, "must be positive"),
        ({"width": 2048}, "above the limit"),
        ({"drill": "meltdown"}, "unknown drill kind"),
        ({"drill": "aliasing:step=x"}, "must be a number"),
        ({"drill": "aliasing:foo=1"}, "malformed drill parameter"),
        ({"drill": "aliasing:step=1.5"}, "must be an integer"),
        ({"drill": "collapse:strength=2"}, "strength for collapse"),
        ({"drill": "aliasing:freq=0.9"}, "freq must be"),
        ({"drill": "nan:step=40"}, "beyond the last step"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        # 101 x 16 x 128 x 128 float32 latents = 101 MiB > max_trajectory_mb (48)
        ({"return_trajectory": True, "steps": 100, "width": 1024, "height": 1024}, "limit is 48 MiB"),
    ],
)
def test_bad_request_fields(fields, message, sd3, settings):
    req = GenerateRequest(**{"deployment": "tiny-sd3", "prompt": "a red fox", **fields})
    with pytest.raises(InvalidArgument, match=message):
        resolve(req, sd3, settings.limits)


def test_defaults_fill_in(sd3, settings):
    r = resolve(GenerateRequest(deployment="tiny-sd3", prompt="a fox", drill="blur"), sd3, settings.limits)
    assert (r.steps, r.width, r.height) == (12, 256, 256)
    assert r.drill is not None and r.drill.kind == "blur" and r.drill.step == 2
