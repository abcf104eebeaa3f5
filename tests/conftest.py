import atexit
import os
import shutil
import tempfile

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per process. Their
# programs are tiny and compiled once each, so LLVM's optimisations cost more than they save: the
# suite's compiled code is built unoptimised (-22 % wall time on the train-step and head tests), unless
# XLA_FLAGS already says otherwise. Commands the tests start inherit it.
_flags = os.environ.get("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One persistent compilation cache for the run, empty at its start (as on a fresh machine) and shared
# with the commands the tests start: a program that one test or command compiled is read back by the
# next that builds it (a new Trainer, a second main.py), as a user's second run reads main.py's cache.
# Programs of every compile time are kept; tests of the cache itself give their commands their own.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="segic_jax_test_xla_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

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


@pytest.fixture(scope="session")
def eval_data_dir(tmp_path_factory):
    """The fake evaluation datasets, built once per run: fss1000 (classes a_cls..e_cls, d_cls and
    e_cls in test), lvis_instances (val), ade20k_semantic with a void (255) band in every val label
    (which scoring must leave out), and synthetic_incontext/tiny."""
    from PIL import Image

    from fake_datasets import fake_splits, write_ade, write_fss, write_lvis
    from segic_jax.data import build

    root = tmp_path_factory.mktemp("eval_data")
    rng = np.random.default_rng(0)
    write_fss(str(root / "fss"), rng, classes=("a_cls", "b_cls", "c_cls", "d_cls", "e_cls"))
    write_lvis(str(root / "lvis"), rng)
    write_ade(str(root / "ade"), rng)
    val_labels = root / "ade" / "annotations" / "validation"
    for name in os.listdir(val_labels):
        label = np.asarray(Image.open(val_labels / name)).copy()
        label[:, -4:] = 255
        Image.fromarray(label).save(val_labels / name)
    data = str(root / "data")
    for name, files in (("fss1000", "fss"), ("lvis_instances", "lvis"), ("ade20k_semantic", "ade"),
                        ("synthetic_incontext/tiny", None)):
        build.build(name, str(root / files) if files else None, data, splits=fake_splits(name))
    return data
