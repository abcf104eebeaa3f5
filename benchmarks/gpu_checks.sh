#!/usr/bin/env bash
# The accelerator checks in one call: parity tests on the GPU, then DINOv2-L/14 at 896 px against
# PyTorch (fp32, tf32, bf16). Run from the repository root on a machine with a GPU, with the
# project's requirements and torch/transformers importable.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
# Exact fp32 needs full-precision matmuls: XLA's default on GPUs is TF32.
JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider \
  tests/test_resize.py tests/test_dinov2.py tests/test_clip_text.py tests/test_correspondence.py -k "not tokenizer" 2>&1 | tail -4
python3 benchmarks/dinov2_forward.py --arch vitl14 --sizes 896 --batch 8 --modes fp32 tf32 bf16 --iters 5 "$@"
