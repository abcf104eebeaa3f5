"""SEGIC configurations.

    python main.py --config configs/segic.py --workdir /tmp/segic_demo              # demo: trains on CPU
    python main.py --config configs/segic.py:paper --workdir runs/segic \
        --config.data.data_dir=data/ --config.dinov2.checkpoint=ckpt/dinov2_vitl14 \
        --config.clip.checkpoint=ckpt/clip_text

Variants after the colon:
  demo   (default) trains SEGIC's head on the built-in synthetic in-context dataset (built on first
         use, no download) with a small random DINOv2 and CLIP text model, on a CPU in minutes, and
         prints held-out mIoU before and after training and the propagated-mask baseline.
  small  the paper's data and recipe with DINOv2 ViT-S/14 at 448 px (converted weights).
  paper  the original's recipe (docs/original.md section 1): DINOv2 ViT-L/14 frozen at 896 px, CLIP
         ViT-L/14 text, float32 with full-precision matmuls, the head from PyTorch's default init,
         AdamW lr 1e-4 / wd 1e-4, x0.1 after epoch 10 of 12, 80k samples per epoch, global batch 32
         with the loss normalised per group of 4 episodes, the uniform COCO/ADE/COCO/LVIS mixture, up
         to 19 instances per episode, square-resized semantic references, reverse context, box prompt
         p 0.5, cross-instance tokens p 0.5, class-name prompt p 0.75. Datasets built with
         `python -m segic_jax.data.build ...` into --config.data.data_dir (coco20i_semantic with
         HSNet's lists for the original's COCO training pools).
  paper_bf16  paper with the frozen encoders in bfloat16 and XLA's default matmul precision: the
         named deviation that makes a step faster (benchmarks/RESULTS.md has its effect).
  finetune  fine-tunes the released SEGIC (train.init_from, fetched once) on your own dataset of a few
         hundred images (docs/your_data.md): user_masks by default (--config.data.mixture names
         another build, or adds the paper's datasets by weight), 10 short epochs at lr 1e-4 dropped
         x0.1 after epoch 8, evaluated on its held-out test split (the `custom` benchmark) before
         and during fine-tuning.
Fields are overridden on the command line, e.g. --config.train.global_batch_size=16. The same
config serves `--mode correspondence` (image_size, dtype, dinov2, seed).
"""

import ml_collections

from segic_jax.data import mixture


VARIANTS = ("demo", "small", "paper", "paper_bf16", "finetune")


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of configs/segic.py; choose {', '.join(VARIANTS)}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.image_size = 896  # square model input, a multiple of 14
    # compute dtype of the frozen encoders (the head trains in float32); float32 also makes every
    # matmul of the step full precision, as PyTorch's float32 (bfloat16: XLA's default precision)
    c.dtype = "float32"

    c.dinov2 = ml_collections.ConfigDict()
    c.dinov2.arch = "vitl14"  # used when no checkpoint is given (random weights)
    c.dinov2.depth = 0  # blocks of a random encoder; 0: the architecture's own
    c.dinov2.checkpoint = ""  # converted DINOv2 directory (python -m segic_jax.convert dinov2)

    c.clip = ml_collections.ConfigDict()
    c.clip.checkpoint = ""  # converted CLIP text directory (python -m segic_jax.convert clip_text)
    c.clip.width = 768  # a random text model's width and depth, when no checkpoint is given
    c.clip.depth = 12

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = "data"  # where the TFDS datasets are built
    # (dataset, split, episodes, weight) entries (segic_jax/data/mixture.py); on the command line a
    # Python tuple: --config.data.mixture="(('synthetic_incontext', 'train', 'class', 1.0),)"
    c.data.mixture = mixture.PAPER
    c.data.max_instances = 19  # most instance masks per episode (0..19 drawn, as the original's randint(0, 19))
    c.data.semantic_scale_range = (0.1, 2.0)  # large-scale jitter of semantic episodes (docs/original.md 4.2)
    # the original resizes a semantic reference to a square, ignoring its aspect ratio (4.2); False keeps it
    c.data.square_reference = True
    c.data.workers = 4  # grain worker processes per host; 0: in-process
    c.data.prefetch = 4  # batches read ahead per process
    c.data.threads = 2  # reading threads per process
    c.data.build_builtin = True  # build the synthetic dataset on first use

    c.train = ml_collections.ConfigDict()
    c.train.global_batch_size = 32
    # episodes whose masks normalise the loss together, the groups' losses then averaged: the original
    # normalises each GPU's 4 episodes by their mask count and averages 8 GPUs' gradients; 0: one batch
    c.train.loss_group = 4
    c.train.head_init = "pytorch"  # the original's initialisation (PyTorch defaults); "flax": Flax's
    # fine-tune: a converted SEGIC directory, a training run's export/, or a release name
    # (segic_dinov2_l_80kx12e): the head starts from its weights and the frozen encoders are its own
    c.train.init_from = ""
    c.train.samples_per_epoch = 80_000
    c.train.epochs = 12
    c.train.num_steps = 0  # 0: epochs x samples_per_epoch / global_batch_size
    c.train.learning_rate = 1e-4
    c.train.weight_decay = 1e-4
    c.train.lr_drop_epoch = 10
    c.train.lr_drop_factor = 0.1
    c.train.box_prob = 0.5
    c.train.cross_prob = 0.5
    c.train.text_prob = 0.75
    c.train.reverse_context = True
    c.train.num_points = 112 * 112
    c.train.oversample = 3.0
    c.train.importance = 0.75
    # Decoder rows (targets x instances) per chunk for rematerialisation, 0 = off: the head's
    # activations then need one chunk's memory, for ~20% more step time (benchmarks/RESULTS.md).
    c.train.remat_rows = 0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.fsdp = 1  # devices the frozen DINOv2 weights are split over; the rest is data parallel

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep = 3
    c.checkpoint.use_async = True
    # a workdir with checkpoints but no config.json (deleted, or written by an older version) is resumed
    # only when this is True: the config of this command is then recorded as the run's, unchecked
    c.checkpoint.resume_without_config = False

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50
    c.log.progress = True  # a tqdm bar; False prints a line per log step instead

    c.eval = ml_collections.ConfigDict()
    c.eval.benchmark = "fss1000"  # held-out evaluation during training (segic_jax.evaluation.evaluate)
    c.eval.data_dir = ""  # empty: data.data_dir
    c.eval.dataset = ""  # another build of the benchmark's dataset (e.g. synthetic_incontext/tiny)
    c.eval.episodes = 500
    c.eval.shots = 1
    c.eval.seed = 0
    c.eval.every_steps = 2500  # 0: never
    c.eval.at_start = False  # also evaluate the untrained model
    c.eval.images = True  # write a prediction image at each evaluation

    if variant == "paper_bf16":
        c.dtype = "bfloat16"
    elif variant == "small":
        c.image_size = 448
        c.dinov2.arch = "vits14"
    elif variant == "finetune":
        # a few hundred images: epochs of 400 episodes in batches of 8 (50 steps), 10 of them; the
        # released model's recipe otherwise (896 px, its own frozen ViT-L/14 and CLIP text)
        c.train.init_from = "segic_dinov2_l_80kx12e"
        c.data.mixture = (("user_masks", "train", "class", 1.0), ("user_masks", "train", "instance", 1.0))
        c.train.global_batch_size = 8
        c.train.loss_group = 4
        c.train.samples_per_epoch = 400
        c.train.epochs = 10
        c.train.lr_drop_epoch = 8
        c.checkpoint.every_steps = 100
        c.log.every_steps = 10
        c.eval.benchmark = "custom"
        c.eval.dataset = "user_masks"
        c.eval.episodes = 200
        c.eval.every_steps = 250
        c.eval.at_start = True
    elif variant == "demo":
        # Small enough to learn visibly on 2 CPU cores in minutes: 168 px (a 12 x 12 feature grid),
        # a 1-block random ViT-S/14 (deeper random blocks blur colour and texture), one decoding
        # pass per step (no reverse context: half the cost), mostly class episodes (what the
        # held-out evaluation asks), mild scale jitter (the paper's 0.1-2.0 would shrink these
        # 168-px scenes to a few pixels), and the paper's step decay over 12 short epochs.
        c.image_size = 168
        c.dinov2.arch = "vits14"
        c.dinov2.depth = 1
        c.clip.width, c.clip.depth = 64, 1
        c.data.data_dir = "~/.cache/segic_jax/data"
        c.data.mixture = (("synthetic_incontext", "train", "class", 3.0), ("synthetic_incontext", "train", "instance", 1.0))
        c.data.semantic_scale_range = (0.7, 1.4)
        c.data.max_instances = 3
        c.data.workers = 0
        c.train.global_batch_size = 8
        c.train.samples_per_epoch = 8 * 40
        c.train.epochs = 12
        c.train.learning_rate = 1e-3
        c.train.reverse_context = False
        c.train.num_points = 32 * 32
        c.checkpoint.every_steps = 120
        c.log.every_steps = 40
        c.eval.benchmark = "synthetic"
        c.eval.episodes = 100
        c.eval.every_steps = 240
        c.eval.at_start = True
    return c
