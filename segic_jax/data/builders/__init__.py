"""TFDS builders for SEGIC's datasets, built from --manual_dir without TensorFlow."""

from segic_jax.data.builders.fewshot import Fss1000
from segic_jax.data.builders.instances import CocoInstances, LvisInstances
from segic_jax.data.builders.semantic import Ade20kSemantic, Coco20iSemantic
from segic_jax.data.builders.synthetic import SyntheticIncontext
from segic_jax.data.builders.user import UserCoco, UserFolders, UserMasks
from segic_jax.data.builders.video import Davis2017, YoutubeVos

BUILDERS = {
    "coco_instances": CocoInstances,
    "lvis_instances": LvisInstances,
    "synthetic_incontext": SyntheticIncontext,
    "ade20k_semantic": Ade20kSemantic,
    "coco20i_semantic": Coco20iSemantic,
    "fss1000": Fss1000,
    "davis2017": Davis2017,
    "youtube_vos": YoutubeVos,
    "user_coco": UserCoco,
    "user_masks": UserMasks,
    "user_folders": UserFolders,
}


def builder_class(name: str):
    """The builder of `name`, a dataset optionally followed by its config (synthetic_incontext/tiny)."""
    dataset = name.partition("/")[0]
    if dataset not in BUILDERS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[dataset]
