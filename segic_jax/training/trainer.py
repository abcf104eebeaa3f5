"""The SEGIC training loop: sharded steps, checkpoints that resume exactly, metrics, evaluation.

    python main.py --config configs/segic.py:demo --workdir /tmp/segic_demo
    python main.py --config configs/segic.py:paper --workdir runs/segic --config.data.data_dir=data/

`Trainer._build` reads top to bottom: the mesh (`training.mesh`), the models, the input (complete
batches from `data.mixture`), the optimizer and the step placed on the mesh, checkpoints and logs;
`Trainer.run`: restore, the loop (step, log, checkpoint, evaluate), export and summary.

One process per host (`segic_jax.distributed`: jax.distributed joins them when the environment
describes several). Each process reads the rows of the global batch its devices hold (row r of
step s is episode s * global_batch_size + r of the seeded stream, and its text prompt is drawn from
(seed, s, r)), so the global batch does not depend on the number of processes, and the loss is
normalised over the global batch, so it does not depend on the number of devices either.

Workdir layout:
  config.json           the config the run started with (a resume may change only some fields)
  checkpoints/<step>/   the state a resumed run continues from (`training.checkpointing`)
  logs/                 TensorBoard events and metrics.jsonl
  images/               predictions on a held-out episode at each evaluation
  export/               the trained model as an inference checkpoint (head/, dinov2/, clip_text/),
                        loadable with `Predictor.from_checkpoint` and `main.py --mode predict`
  summary.json          final figures
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from segic_jax import atomic_files, distributed
from segic_jax.data import build as build_lib
from segic_jax.data import episodes, mixture
from segic_jax.models import bundle, clip_text, dinov2
from segic_jax.models.encoders import build_encoder, build_text_encoder, compute_dtype, encode_prompts, matmul_precision
from segic_jax.models.layers import pytorch_default_init
from segic_jax.models.segic import SegicConfig, SegicHead
from segic_jax.training import config_checks, mesh as mesh_lib, step as step_lib, workdir as workdir_lib
from segic_jax.training import checkpointing
from segic_jax.training.checkpointing import Checkpoints, TrainState
from segic_jax.training.writer import MetricWriter

def _fine_tuned(config) -> str:
    """The converted SEGIC that config.train.init_from names (a release is fetched once), or ""."""
    name = config.train.init_from
    if not name:
        return ""
    if config.dinov2.checkpoint or config.clip.checkpoint:
        raise ValueError("config.train.init_from brings its own encoders: leave config.dinov2.checkpoint and "
                         "config.clip.checkpoint empty")
    from segic_jax import pretrained

    path = pretrained.checkpoint_path(os.path.expanduser(name))
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.train.init_from={name}: no such directory, nor a release name "
                                f"({', '.join(pretrained.RELEASES)})")
    bundle.check(path)
    return os.path.abspath(path)


def new_head(config, encoder: dinov2.Dinov2, text_model: clip_text.ClipTextModel) -> SegicHead:
    """A freshly initialised head for these encoders at config.image_size."""
    if config.image_size % 14:
        raise ValueError(f"config.image_size must be a multiple of 14, got {config.image_size}")
    cfg = SegicConfig(vision_dim=encoder.cfg.embed_dim, text_dim=text_model.cfg.width, image_size=config.image_size)

    @nnx.jit
    def draw() -> SegicHead:  # one compiled program (drawn op by op, the init compiled ~100 small ones)
        head = SegicHead(cfg, rngs=nnx.Rngs(config.seed + 2))
        if config.train.head_init == "pytorch":  # what the original trains from (docs/original.md 1)
            pytorch_default_init(head, jax.random.key(config.seed + 3))
        return head

    return draw()


class Trainer:
    """Everything a run needs, built from a config; `run()` trains to the end (or to SIGTERM)."""

    def __init__(self, config, workdir: str):
        config_checks.check(config)
        self.config, self.workdir = config, os.path.abspath(workdir)
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ValueError(f"--workdir {self.workdir} is a file; give a folder")
        fresh = not os.path.exists(self.workdir)
        self.lock = workdir_lib.Lock(self.workdir) if jax.process_index() == 0 else None
        try:
            checkpointing.check_folder(self.workdir)
            resuming = workdir_lib.has_checkpoints(self.workdir)
            if self.lock is not None and resuming:  # before anything is built: a wrong config fails in seconds
                workdir_lib.check_config(self.workdir, config)
            self._build(config)
            if self.lock is not None and not resuming:
                workdir_lib.record_config(self.workdir, config)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
                if fresh and os.path.isdir(self.workdir) and not os.listdir(self.workdir):
                    os.rmdir(self.workdir)  # a run that could not start leaves no empty workdir behind
            raise
        if self.lock is not None and self.lock.taken_over:
            print(f"took over the lock of process {self.lock.taken_over.get('pid')}, which no longer runs", flush=True)

    def _build(self, config) -> None:
        c = config
        if jax.process_count() > 1 and not jax.distributed.is_initialized():
            # without jax.distributed the processes cannot agree where to stop on a preemption
            raise ValueError(f"this job has {jax.process_count()} processes but jax.distributed was not initialized: "
                             "set SEGIC_JAX_DISTRIBUTED=1 on every process (see segic_jax/distributed.py)")
        if c.train.global_batch_size % jax.process_count():
            raise ValueError(f"config.train.global_batch_size {c.train.global_batch_size} is not divisible by the {jax.process_count()} processes")
        self.is_main = jax.process_index() == 0

        # --- mesh: this process feeds the rows of the global batch that its devices hold
        self.mesh = mesh_lib.make_mesh(c.mesh.fsdp)
        if c.train.global_batch_size % self.mesh.size:
            raise ValueError(f"config.train.global_batch_size {c.train.global_batch_size} is not divisible by the {self.mesh.size} devices")
        self.batch_sharding = mesh_lib.batch_sharding(self.mesh)
        rows = mesh_lib.local_rows(self.batch_sharding, c.train.global_batch_size)

        self.init_from = start = _fine_tuned(c)  # checked first: a wrong name fails in seconds

        # --- input: complete batches (episodes and their prompts) from data/; batch s is step s's (read
        # before the models are built: a dataset that is missing fails in seconds too)
        self.data_dir = os.path.abspath(os.path.expanduser(c.data.data_dir))
        parts = mixture.parts(c.data.mixture)
        if c.data.build_builtin:
            build_lib.ensure_builtin([p.dataset for p in parts], self.data_dir)
        self.data = mixture.training_data(
            parts, self.data_dir, c.image_size, c.data.max_instances, batch_size=c.train.global_batch_size, seed=c.seed,
            samples_per_epoch=c.train.samples_per_epoch, text_prob=c.train.text_prob, rows=rows,
            semantic_aug=episodes.SemanticAugment(scale_range=tuple(c.data.semantic_scale_range),
                                                  square_reference=c.data.square_reference),
        )

        # --- models: frozen encoders and a new head, or those of the model to fine-tune
        self.clip_dir = bundle.part_path(start, bundle.CLIP_TEXT) if start else c.clip.checkpoint
        self.encoder, enc_note = build_encoder(c, bundle.part_path(start, bundle.DINOV2) if start else "")
        self.text_model, self.tokenizer, text_note = build_text_encoder(c, self.clip_dir)
        self.head = new_head(c, self.encoder, self.text_model)
        if start:
            self.head = bundle.load_head_weights(self.head, start)
        self.notes = {"dinov2": enc_note, "clip_text": text_note, **({"init_from": start} if start else {})}
        self.steps_per_epoch = c.train.samples_per_epoch // c.train.global_batch_size  # >= 1 (config_checks.check)
        self.num_steps = c.train.num_steps or c.train.epochs * self.steps_per_epoch
        self.iterator = None  # started at the first batch, from the step then current

        # --- optimizer and step, on the mesh; CLIP runs once per prompt here, not in the step
        self.schedule = step_lib.step_decay_schedule(
            c.train.learning_rate, self.steps_per_epoch, c.train.lr_drop_epoch, c.train.lr_drop_factor
        )
        options = step_lib.StepOptions(
            box_prob=c.train.box_prob, cross_prob=c.train.cross_prob, reverse_context=c.train.reverse_context,
            num_points=c.train.num_points, oversample=c.train.oversample, importance=c.train.importance,
            remat_rows=c.train.remat_rows, loss_group=c.train.loss_group,
            precision=matmul_precision(compute_dtype(c.dtype, "config.dtype")),
        )
        text_table = encode_prompts(self.text_model, self.tokenizer, self.data.prompts)
        self.placed, params, opt_state = mesh_lib.place_step(
            self.mesh, self.head, self.encoder, text_table, step_lib.optimizer(self.schedule, c.train.weight_decay), options)
        self.state = TrainState(0, params, opt_state)
        self.base_key = jax.random.key(c.seed)

        # --- checkpoints and logs
        self.checkpoints = Checkpoints(self.workdir, self.mesh, keep=c.checkpoint.keep, use_async=c.checkpoint.use_async)
        self.writer = MetricWriter(os.path.join(self.workdir, "logs"), enabled=self.is_main)

    # --- pieces ---------------------------------------------------------------------------

    def save(self, force: bool = False) -> bool:
        return self.checkpoints.save(self.state, self.base_key, force)

    def restore(self) -> bool:
        """Continue from the latest checkpoint that restores (`Checkpoints.restore`); the metric logs
        then drop what was logged after it, and the data continues at its step's batch."""
        restored = self.checkpoints.restore(self.state, self.base_key)
        if restored is None:
            return False
        self.state, self.base_key, skipped = restored
        self.iterator = None  # the next batch is the resumed step's
        for line in skipped:
            print(line, flush=True)
        dropped = self.writer.resume_at(self.state.step)
        if dropped:
            print(f"dropped {dropped} metric records logged after step {self.state.step} (they are logged again)", flush=True)
        return True

    def next_batch(self) -> tuple[dict, dict]:
        """The next global batch as sharded device arrays, plus its host-side fields."""
        if self.iterator is None:
            d = self.config.data
            self.iterator = episodes.iterator(self.data.batches[self.state.step:], d.workers, d.prefetch, d.threads)
        batch = next(self.iterator)
        arrays = {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                  for k, v in batch.arrays.items()}
        return arrays, batch.info

    def train_step(self, batch: dict) -> step_lib.StepOutput:
        key = jax.random.fold_in(self.base_key, self.state.step)
        p = self.placed
        params, opt_state, out = p.run(self.state.params, p.rest, self.state.opt_state, p.encoder_state, p.text_table,
                                       batch, key)
        self.state = TrainState(self.state.step + 1, params, opt_state)
        return out

    def current_head(self) -> SegicHead:
        """The head with the current parameters, on one device (the predictor's programs run there:
        copied once here, not with every call)."""
        device = jax.local_devices()[0]
        return nnx.merge(self.placed.head_graph, *jax.device_put(jax.device_get((self.state.params, self.placed.rest)), device))

    def evaluate(self, tag: str) -> dict:
        """Held-out evaluation of the current head (config.eval), with a prediction image. In a
        multi-process job the processes split the episodes, their records meeting in
        workdir/eval_records/ (removed afterwards), and all return the same scores."""
        import shutil

        from segic_jax.evaluation.evaluate import evaluate, model_predictor
        from segic_jax.evaluation.example import example_image

        c = self.config.eval
        predictor = model_predictor(self.current_head(), self.encoder, self.text_model, self.tokenizer)
        data_dir = os.path.expanduser(c.data_dir) if c.data_dir else self.data_dir
        dataset = c.dataset or None
        records = os.path.join(self.workdir, "eval_records") if jax.process_count() > 1 else None
        if records and self.is_main:
            shutil.rmtree(records, ignore_errors=True)  # left by a run stopped during an evaluation
        distributed.sync(f"evaluation {tag}: records cleared")
        result = evaluate(
            predictor, c.benchmark, data_dir, shots=c.shots, episodes=c.episodes, seed=c.seed, dataset=dataset,
            workdir=records, progress=False,
        )
        distributed.sync(f"evaluation {tag}: records read")
        if records and self.is_main:
            shutil.rmtree(records)
        scores = {f"eval/{k}": v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.writer.scalars(self.state.step, scores)
        if self.is_main and c.images:
            # the representative of (at most 20 of) the episodes just scored, not more work than they were
            image = example_image(predictor, c.benchmark, data_dir, dataset=dataset, seed=c.seed,
                                  candidates=min(20, c.episodes))
            atomic_files.write_png(os.path.join(self.workdir, "images", f"{tag}.png"), image)
            self.writer.image(self.state.step, "eval/prediction", image)
        return result

    def export(self, out_dir: str | None = None) -> str:
        """The trained head with the frozen encoders as an inference checkpoint."""
        tokenizer = clip_text.tokenizer_files(self.clip_dir) if self.clip_dir else None
        return bundle.save(
            out_dir or os.path.join(self.workdir, "export"),
            bundle.module_part(self.current_head(), "segic-jax training"),
            bundle.module_part(self.encoder, self.notes["dinov2"]),
            bundle.module_part(self.text_model, self.notes["clip_text"]),
            tokenizer_files=tokenizer or None, overwrite=True,
        )

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> dict:
        """Train from the latest checkpoint to the last step (or to a stop signal), evaluating and
        checkpointing on the way; export and write the summary at the end."""
        c = self.config
        # --- restore: the step, and what the earlier runs on this workdir measured up to it
        resumed = self.restore()
        earlier = self._previous_summary() if resumed else {}
        finished_before = resumed and self.state.step >= self.num_steps
        if resumed and not finished_before:
            print(f"resumed from step {self.state.step} in {self.checkpoints.dir}", flush=True)
        evals = {k: v for k, v in earlier.get("evaluations", {}).items()
                 if k == "untrained" or (k.startswith("step_") and k[5:].isdigit() and int(k[5:]) <= self.state.step)}
        losses: list[float] = list(earlier.get("train_losses", []))[: self.state.step // c.log.every_steps]
        if c.eval.every_steps and c.eval.at_start and not resumed:
            evals["untrained"] = self.evaluate("untrained")
            print(f"step 0 ({_row_names(c)[0].removesuffix(' model')}): {_format_eval(evals['untrained'])}", flush=True)

        # --- loop: step, log, checkpoint, evaluate
        start_step, t0 = self.state.step, time.time()
        stopped = False
        with _StopSignals() as stop, _Progress(self, disabled=finished_before) as progress:
            while self.state.step < self.num_steps:
                if self._stopping(stop):
                    stopped = True
                    break
                batch, _ = self.next_batch()
                progress.add(self.train_step(batch))
                step = self.state.step
                if step % c.log.every_steps == 0 or step == self.num_steps:
                    losses.append(progress.log(step, start_step, t0))
                if c.checkpoint.every_steps and step % c.checkpoint.every_steps == 0:
                    self.save()
                self.checkpoints.check(self.state.step)
                if c.eval.every_steps and (step % c.eval.every_steps == 0 or step == self.num_steps):
                    evals[f"step_{step}"] = self.evaluate(f"step_{step:06d}")
                    progress.write(f"step {step}: {_format_eval(evals[f'step_{step}'])}")
            if not stopped:
                if self.checkpoints.latest_step() != self.state.step:
                    self.save(force=True)
                self.checkpoints.wait_until_finished(self.state.step)
            self.checkpoints.check(self.state.step)

        # --- a rerun of a finished run trains nothing: its summary and export stand as they are
        if finished_before and earlier.get("step") == self.state.step and not earlier.get("stopped_early") \
                and os.path.isdir(earlier.get("export") or ""):
            self.writer.flush()
            return {**earlier, "already_finished": True}

        # --- export and summary
        steps = self.state.step - start_step
        summary: dict[str, Any] = {
            "resumed_from": start_step if resumed else None, **self.notes,
            "step": self.state.step, "num_steps": self.num_steps, "stopped_early": stopped, "train_losses": losses,
            "seconds": time.time() - t0, "steps_this_run": steps,
            "steps_per_second": steps / max(time.time() - t0, 1e-9) if steps else earlier.get("steps_per_second", 0.0),
            "evaluations": evals,
        }
        if not stopped and self.is_main:
            summary["export"] = self.export()
        if self.is_main:
            atomic_files.write_json(os.path.join(self.workdir, "summary.json"), _jsonable(summary))
        self.writer.flush()
        return summary

    def _stopping(self, stop: "_StopSignals") -> bool:
        """Whether a stop was asked for (a signal here, or jax's preemption notice reaching every
        process at this step); if so, the current step is checkpointed first."""
        if not (stop.requested or self.checkpoints.reached_preemption(self.state.step)):
            return False
        if self.checkpoints.latest_step() != self.state.step:
            self.save(force=True)
        self.checkpoints.wait_until_finished(self.state.step)
        print(f"stopped at step {self.state.step}: checkpoint written", flush=True)
        return True

    def _previous_summary(self) -> dict:
        """The summary.json an earlier run on this workdir wrote ({} when there is none or it is unreadable)."""
        path = os.path.join(self.workdir, "summary.json")
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError):
            return {}
        return previous if isinstance(previous, dict) else {}

    def close(self) -> None:
        try:
            self.checkpoints.close()
            self.writer.close()
        finally:
            if self.lock is not None:
                self.lock.release()


# exit status of `main.py --mode train` when a signal stopped the run before its last step (after a
# checkpoint): EX_TEMPFAIL, so that a scheduler can tell "requeue me" from success and from failure
EXIT_STOPPED_EARLY = 75


class _StopSignals:
    """While training: SIGTERM and Ctrl-C ask for a stop after the current step, with a checkpoint
    (`requested`); a second Ctrl-C aborts at once. In a multi-process job SIGTERM is left to jax's
    preemption notifier, which tells every process, so that all stop at the same step
    (`reached_preemption`); a handler here would stop one alone."""

    def __init__(self):
        self.requested, self.interrupts, self.previous = False, 0, {}

    def __enter__(self) -> "_StopSignals":
        import threading

        if threading.current_thread() is threading.main_thread():  # signals can be handled there alone
            if jax.process_count() == 1:
                self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
            self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _on_sigterm(self, signum, frame):
        self.requested = True

    def _on_sigint(self, signum, frame):
        self.interrupts += 1
        if self.interrupts > 1:
            raise KeyboardInterrupt
        if jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # to jax's notifier: every process stops at the same step
        else:
            self.requested = True
        print("\nstopping after this step with a checkpoint (Ctrl-C again to abort without one)", flush=True)


class _Progress:
    """The training progress report: step metrics averaged between log steps (clu), logged to
    TensorBoard and metrics.jsonl, shown on a tqdm bar (or as a line per log step)."""

    def __init__(self, trainer: Trainer, disabled: bool):
        from clu import metrics as clu_metrics
        from tqdm.auto import tqdm

        self.trainer, self.metrics = trainer, None
        self.collection = clu_metrics.Collection.create(
            loss=clu_metrics.Average.from_output("loss"),
            loss_mask=clu_metrics.Average.from_output("loss_mask"),
            loss_dice=clu_metrics.Average.from_output("loss_dice"),
            loss_reverse=clu_metrics.Average.from_output("loss_reverse"),
            mask_iou=clu_metrics.Average.from_output("iou"),
        )
        self.lines = not trainer.config.log.progress
        self.bar = tqdm(total=trainer.num_steps, initial=trainer.state.step, desc="training",
                        disable=not trainer.is_main or self.lines or disabled)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def add(self, out: step_lib.StepOutput) -> None:
        update = self.collection.single_from_model_output(loss=out.loss, loss_mask=out.loss_mask, loss_dice=out.loss_dice,
                                                          loss_reverse=out.loss_reverse, iou=out.iou)
        self.metrics = update if self.metrics is None else self.metrics.merge(update)
        self.bar.update(1)

    def log(self, step: int, start_step: int, t0: float) -> float:
        """Log the metrics since the last log step; returns their mean loss."""
        t = self.trainer
        values = {k: float(v) for k, v in self.metrics.compute().items()}
        rate = (step - start_step) / max(time.time() - t0, 1e-9)
        values.update(learning_rate=float(t.schedule(step - 1)), steps_per_second=rate)
        t.writer.scalars(step, {f"train/{k}": v for k, v in values.items()})
        self.bar.set_postfix(loss=f"{values['loss']:.4f}", iou=f"{values['mask_iou']:.3f}")
        if self.lines:
            eta = (t.num_steps - step) / max(rate, 1e-9)
            print(f"step {step}/{t.num_steps} loss {values['loss']:.4f} mask IoU {values['mask_iou']:.3f} "
                  f"{rate:.2f} steps/s ETA {eta:.0f}s", flush=True)
        self.metrics = None
        return values["loss"]

    def write(self, line: str) -> None:
        self.bar.write(line)


def _row_names(config) -> tuple[str, str]:
    """The summary's names for the model at step 0 and at the end: untrained and trained, or before
    and after fine-tuning (config.train.init_from)."""
    return ("before fine-tuning", "fine-tuned model") if config.train.init_from else ("untrained model", "trained model")


def _format_eval(result: dict) -> str:
    keys = [k for k in ("miou", "baseline_miou", "fb_iou") if k in result]
    return ", ".join(f"{k} {result[k]:.1f}" for k in keys)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, jax.Array)):
        return np.asarray(x).tolist()
    return x


def train(config, workdir: str) -> dict:
    """Train as `config` says; returns the summary (also written to workdir/summary.json)."""
    distributed.initialize()
    trainer = Trainer(config, workdir)
    try:
        summary = trainer.run()
    finally:
        trainer.close()
    if jax.process_index() == 0:
        print(report(summary, config))
    return summary


def report(summary: dict, config) -> str:
    """The end-of-run lines: steps, speed, held-out scores before and after, the export."""
    if summary.get("already_finished"):
        lines = [f"this workdir holds a finished run ({summary['step']}/{summary['num_steps']} steps, trained at "
                 f"{summary['steps_per_second']:.2f} steps/s); its results, kept in summary.json:"]
    else:
        lines = [f"trained {summary['step']}/{summary['num_steps']} steps at {summary['steps_per_second']:.2f} steps/s"
                 + (" (stopped early; run again to resume)" if summary["stopped_early"] else "")]
    evals = summary["evaluations"]
    if evals:
        last = evals[max((k for k in evals if k.startswith("step_")), key=lambda k: int(k[5:]), default="untrained")]
        name = f"{config.eval.benchmark} ({config.eval.episodes} held-out episodes)"
        lines.append(f"{name} mIoU:")
        before, after = _row_names(config)
        if "untrained" in evals:
            lines.append(f"  {before:<27}{evals['untrained']['miou']:6.1f}")
        lines.append(f"  {after:<27}{last['miou']:6.1f}")
        lines.append(f"  propagated-mask baseline   {last['baseline_miou']:6.1f}  (similarity > 0.5, no decoder)")
    if summary.get("export"):
        lines.append(f"inference checkpoint: {summary['export']} (python main.py --mode predict --checkpoint ...)")
    return "\n".join(lines)
