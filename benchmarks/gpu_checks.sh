#!/usr/bin/env bash
# Every accelerator figure of benchmarks/RESULTS.md, each step under its own time limit (the steps
# print as they go; their logs and the profiler traces go to $OUT):
#   parity         the GPU-sensitive parity tests (full-precision matmuls, as PyTorch's float32), 60 s
#   dinov2_forward DINOv2-L/14 at 896 px, batch 8, against Hugging Face PyTorch: fp32, bf16, fp8, 110 s
#   segic_bf16     SEGIC episodes against the original (fp32 and bf16 autocast): ours in bf16 at
#                  batch 1 and 8, uncached and cached, host overhead, MFU, a jax.profiler trace, 190 s
#   segic_fp8      the same with DINOv2's linear layers in FP8 (batch 1 and 8), 120 s
#   train_step     the training step at the paper's size against the original (fp32, autocast): ours as
#                  configs/segic.py:paper (float32, full-precision matmuls) and paper_bf16, 240 s
#   attention_f32  float32 attention of DINOv2-L at 896 px: XLA's against the chunked path, forward and
#                  gradient, chunk sizes 256 to 1024 (which one float32 on a GPU should take), 90 s
#   segic_f32      SEGIC episodes at DINOv2-L/896 in float32 against the original in float32, 200 s
#
#   bash benchmarks/gpu_checks.sh REFS [STEP ...]     (default: every step)
#
# A lent GPU gives 15 minutes in all, start-up included, and a call may run 600 s: run it as two
# calls of 6 minutes, `... .ref parity dinov2_forward segic_bf16` and `... .ref segic_fp8
# train_step`; a third for the float32 rows, `... .ref attention_f32 segic_f32`. Run from the repository root on a machine with a GPU, torch and transformers. REFS
# (e.g. .ref) holds checkouts of MengLcool/SEGIC (REFS/SEGIC) and facebookresearch/dinov2
# (REFS/dinov2), which the SEGIC and training steps need. Python packages missing there can come as
# wheels in .whl/ (flax, ml_collections, open_clip_torch); they are installed to /tmp/site first.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
REFS=${1:-.ref}
shift $(( $# > 0 ? 1 : 0 ))
STEPS=" ${*:-parity dinov2_forward segic_bf16 segic_fp8 train_step attention_f32 segic_f32} "
LOGS=${OUT:-/tmp/gpu_checks}
mkdir -p "$LOGS"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

step() {  # step NAME SECONDS COMMAND...: if asked for, run it under a time limit, keep its log, drop progress bars
  local name=$1 limit=$2
  shift 2
  [[ $STEPS == *" $name "* ]] || return 0
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s)"
  timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" | grep -v -e "it/s]" -e "warnings.warn" -e "UserWarning"
  echo "== $name: exit status ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import jax, flax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())"
step parity 60 env JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider \
  tests/test_dinov2.py tests/test_correspondence.py tests/test_attention.py tests/test_fp8.py
step dinov2_forward 110 python3 benchmarks/dinov2_forward.py --arch vitl14 --sizes 896 --batch 8 --modes fp32 bf16 fp8 --iters 3
step segic_bf16 190 python3 benchmarks/segic_inference.py --original "$REFS/SEGIC" --dinov2-repo "$REFS/dinov2" \
  --arch vitl14 --image-size 896 --dtypes bfloat16 --batch-sizes 1 8 --episodes 3 --original-autocast --profile "$LOGS/traces"
step segic_fp8 120 python3 benchmarks/segic_inference.py --original "$REFS/SEGIC" --dinov2-repo "$REFS/dinov2" \
  --arch vitl14 --image-size 896 --dtypes fp8 --batch-sizes 1 8 --episodes 3
step train_step 240 python3 benchmarks/train_step.py --original "$REFS/SEGIC" --dinov2-repo "$REFS/dinov2" \
  --arch vitl14 --image-size 896 --batch 4 --instances 3 --dtypes float32 bfloat16 --remat-rows 0 --steps 5
step attention_f32 90 bash -c "python3 benchmarks/attention.py --heads 16 --tokens 4097 --chunks 256 512 1024 && \
  python3 benchmarks/attention.py --heads 16 --tokens 4097 --chunks 256 512 1024 --gradient"
step segic_f32 200 python3 benchmarks/segic_inference.py --original "$REFS/SEGIC" --dinov2-repo "$REFS/dinov2" \
  --arch vitl14 --image-size 896 --dtypes float32 --episodes 3
