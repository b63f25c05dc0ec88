import logging
import os
import warnings

import pytest
import torch

# Triton kernels run in the interpreter on CPU tensors unless a real GPU is present. Triton reads this
# when it is first imported, and importing diffusers may import it, so it is set here, before any test
# module is collected. backend="auto" never picks the interpreter, so other tests are unaffected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

warnings.filterwarnings("ignore")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def settings():
    from latentguard.server.config import Settings

    return Settings()


@pytest.fixture(scope="session")
def deployments(settings):
    """The built-in deployments, loaded once, with their shipped profiles."""
    from diffusers.utils import logging as dlog

    from latentguard.server.pipelines.deployments import load_deployment

    dlog.set_verbosity_error()
    logging.getLogger("latentguard").setLevel(logging.ERROR)
    return {cfg.name: load_deployment(cfg) for cfg in settings.deployments}


@pytest.fixture(scope="session")
def sd3(deployments):
    return deployments["tiny-sd3"]


@pytest.fixture(scope="session")
def flux(deployments):
    return deployments["tiny-flux"]
