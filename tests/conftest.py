import os

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per process.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny random converted SEGIC (tests/tiny_checkpoint.py), written once per run."""
    from tiny_checkpoint import save_tiny_checkpoint

    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("tiny_segic") / "ckpt"))


@pytest.fixture(scope="session")
def predictor(checkpoint):
    from segic_jax.inference.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint)
