"""SEGIC configurations.

    python main.py --config configs/segic.py:demo --workdir /tmp/segic_demo

Variants after the colon:
  demo   (default) DINOv2 ViT-S/14 at 448 px, random weights unless a converted checkpoint is
         given: runs in seconds on a CPU.
  paper  DINOv2 ViT-L/14 at 896 px, as SEGIC uses it; give the converted hub weights with
         --config.dinov2.checkpoint=DIR (from `python -m segic_jax.convert dinov2 ...`).
Fields are overridden on the command line, e.g. --config.image_size=560 --config.dtype=bfloat16.
"""

import ml_collections

VARIANTS = {
    "demo": dict(arch="vits14", image_size=448),
    "paper": dict(arch="vitl14", image_size=896),
}


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/segic.py; choose one of {sorted(VARIANTS)}")
    v = VARIANTS[variant]
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.image_size = v["image_size"]  # square model input, a multiple of 14
    c.dtype = "float32"  # compute dtype of the frozen encoder: float32 or bfloat16
    c.dinov2 = ml_collections.ConfigDict()
    c.dinov2.arch = v["arch"]  # used when no checkpoint is given (random weights)
    c.dinov2.checkpoint = ""  # converted DINOv2 directory; empty: random weights
    return c
