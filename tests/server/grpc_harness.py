"""Settings for a real latentguard gRPC server on loopback (ephemeral ports)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from latentguard.server.config import Settings, builtin_deployments
from latentguard.server.harness.background import BackgroundServer as ServerThread

__all__ = ["LONG_RUN", "ServerThread", "make_settings", "samples", "scrape", "value"]

# a tiny-flux request that outlives a 0.6 s deadline whatever the machine: 100 steps at 512 x 512 take
# about 3 s here; at 256 x 256 an idle machine finished them in about 0.6 s, so deadline tests passed
# or failed by chance
LONG_RUN = {"width": 512, "height": 512}


def make_settings(**overrides) -> Settings:
    deployments = builtin_deployments()
    deployments[0] = deployments[0].model_copy(update={"max_queue": 1})
    return Settings(
        deployments=deployments, host="127.0.0.1", port=0, metrics_port=0, grace_seconds=20, **overrides
    )


def scrape(server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=5) as r:
        return r.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def run_own_pipeline(dep, prompt: str, noise, steps: int, callback, **kwargs) -> None:
    """A 256 x 256 run of the deployment's own diffusers pipeline to latents, as a user's code would
    drive it with a sidecar callback (InspectCallback)."""
    dep.pipe(
        prompt,
        num_inference_steps=steps,
        latents=dep.family.to_pipeline(noise),
        output_type="latent",
        max_sequence_length=dep.config.max_sequence_length,
        height=256,
        width=256,
        callback_on_step_end=callback,
        **kwargs,
    )
