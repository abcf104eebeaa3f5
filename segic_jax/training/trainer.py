"""The SEGIC training loop: sharded steps, checkpoints that resume exactly, metrics, evaluation.

    python main.py --config configs/segic.py:demo --workdir /tmp/segic_demo
    python main.py --config configs/segic.py:paper --workdir runs/segic --config.data.data_dir=data/

One process per host (`segic_jax.distributed`: jax.distributed joins them when the environment
describes several); devices form a ("data", "fsdp") mesh. Episodes are sharded over both axes; the
head and its optimizer state are replicated, the frozen DINOv2 weights are split over "fsdp"
(replicated when it is 1). Each process reads the episodes of the global batch rows its devices hold
(row r of step s is episode s * global_batch_size + r of the seeded stream, and its text prompt is
drawn from (seed, s, r)), so the global batch does not depend on the number of processes, and the
loss is normalised over the global batch, so it does not depend on the number of devices either.

Workdir layout:
  checkpoints/<step>/   orbax: head parameters, optimizer state, step, RNG (the step also fixes where
                        the data continues); written asynchronously, a step without its commit
                        marker is never read
  logs/                 TensorBoard events and metrics.jsonl
  images/               predictions on a held-out episode at each evaluation
  export/               the trained model as an inference checkpoint (head/, dinov2/, clip_text/),
                        loadable with `Predictor.from_checkpoint` and `main.py --mode predict`
  summary.json          final figures
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from segic_jax import distributed, files
from segic_jax.data import build as build_lib
from segic_jax.data import episodes, mixture
from segic_jax.models import bundle, clip_text, dinov2
from segic_jax.models.encoders import build_encoder, build_text_encoder, compute_dtype, encode_prompts, matmul_precision
from segic_jax.models.layers import pytorch_default_init
from segic_jax.models.segic import SegicConfig, SegicHead
from segic_jax.training import checks, mesh as mesh_lib, step as step_lib, workdir as workdir_lib
from segic_jax.training.writer import MetricWriter

def new_head(config, encoder: dinov2.Dinov2, text_model: clip_text.ClipTextModel) -> SegicHead:
    """A freshly initialised head for these encoders at config.image_size."""
    if config.image_size % 14:
        raise ValueError(f"config.image_size must be a multiple of 14, got {config.image_size}")
    cfg = SegicConfig(vision_dim=encoder.cfg.embed_dim, text_dim=text_model.cfg.width, image_size=config.image_size)
    head = SegicHead(cfg, rngs=nnx.Rngs(config.seed + 2))
    if config.train.head_init == "pytorch":  # what the original trains from (docs/original.md 1)
        pytorch_default_init(head, jax.random.key(config.seed + 3))
    return head


@dataclasses.dataclass
class TrainState:
    step: int
    params: Any
    opt_state: Any


class Trainer:
    """Everything a run needs, built from a config; `run()` trains to the end (or to SIGTERM)."""

    def __init__(self, config, workdir: str):
        checks.check(config)
        self.config, self.workdir = config, os.path.abspath(workdir)
        if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
            raise ValueError(f"--workdir {self.workdir} is a file; give a folder")
        fresh = not os.path.exists(self.workdir)
        self.lock = workdir_lib.Lock(self.workdir) if jax.process_index() == 0 else None
        try:
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

        # --- models: frozen encoders, a new head
        self.encoder, enc_note = build_encoder(c)
        self.text_model, self.tokenizer, text_note = build_text_encoder(c)
        self.head = new_head(c, self.encoder, self.text_model)
        self.notes = {"dinov2": enc_note, "clip_text": text_note}

        # --- input: complete batches (episodes and their prompts) from data/; batch s is step s's
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
        self.steps_per_epoch = c.train.samples_per_epoch // c.train.global_batch_size  # >= 1 (checks.check)
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
        self.placed = mesh_lib.place_step(self.mesh, self.head, self.encoder, text_table,
                                          step_lib.optimizer(self.schedule, c.train.weight_decay), options)
        self.state = TrainState(0, self.placed.params, self.placed.opt_state)
        self.base_key = jax.random.key(c.seed)

        # --- checkpoints and logs
        self.ckpt_dir = os.path.join(self.workdir, "checkpoints")
        self.manager = self._manager()
        self.writer = MetricWriter(os.path.join(self.workdir, "logs"), enabled=self.is_main)
        self._stop_requested = False
        self._interrupts = 0

    # --- pieces ---------------------------------------------------------------------------

    def _manager(self):
        import orbax.checkpoint as ocp

        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.config.checkpoint.keep,
            enable_async_checkpointing=self.config.checkpoint.use_async,
            create=True,
        )
        return ocp.CheckpointManager(self.ckpt_dir, options=options)

    def _state_tree(self) -> dict:
        # step and key replicated over the mesh like the rest (orbax refuses single-device arrays in a
        # multi-process job), put there from host values (jax cannot put a single-device array there
        # when each process has one device)
        replicated = NamedSharding(self.mesh, P())
        step = np.asarray(self.state.step, np.int64 if jax.config.jax_enable_x64 else np.int32)
        return {
            "params": self.state.params,
            "opt_state": self.state.opt_state,
            "step": jax.device_put(step, replicated),
            "rng": jax.device_put(np.asarray(jax.random.key_data(self.base_key)), replicated),
        }

    def save(self, force: bool = False) -> bool:
        import orbax.checkpoint as ocp

        args = ocp.args.Composite(state=ocp.args.StandardSave(self._state_tree()))
        return self.manager.save(self.state.step, args=args, force=force)

    def restore(self) -> bool:
        """Continue from the latest checkpoint that restores. One that does not (damaged on disk) is
        moved to workdir/checkpoints_unreadable/ and named, and the one before it is tried; nothing is
        deleted. The metric logs then drop what was logged after the resumed step. The data continues
        at the resumed step's batch (the batches are a function of the step), so a run may resume on
        another number of processes, devices or data workers."""
        import orbax.checkpoint as ocp

        skipped = []
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, self._state_tree())
        while (latest := self.manager.latest_step()) is not None:
            try:
                restored = self.manager.restore(
                    latest, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
                )
            except Exception as e:  # orbax and tensorstore raise many types for a damaged checkpoint
                reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:300]
                skipped.append(self._set_aside(latest, reason))
                continue
            tree = restored.state
            self.state = TrainState(int(tree["step"]), tree["params"], tree["opt_state"])
            self.base_key = jax.random.wrap_key_data(tree["rng"])
            self.iterator = None  # the next batch is the resumed step's
            for line in skipped:
                print(line, flush=True)
            dropped = self.writer.resume_at(self.state.step)
            if dropped:
                print(f"dropped {dropped} metric records logged after step {self.state.step} (they are logged again)", flush=True)
            return True
        if skipped:
            raise ValueError(" ".join(skipped) + " No checkpoint could be restored; start a new --workdir, or move "
                             f"{os.path.join(self.workdir, 'checkpoints_unreadable')} back to retry them")
        return False

    def _set_aside(self, step: int, reason: str) -> str:
        """Move the unreadable checkpoint of `step` out of the manager's way (kept, not deleted)."""
        src = os.path.join(self.ckpt_dir, str(step))
        aside = os.path.join(self.workdir, "checkpoints_unreadable")
        dst = os.path.join(aside, f"{step}-{int(time.time())}")
        if self.is_main and os.path.isdir(src):
            os.makedirs(aside, exist_ok=True)
            os.rename(src, dst)
        distributed.sync(f"checkpoint {step} set aside")  # before any process looks for the latest again
        self.manager.close()
        self.manager = self._manager()
        return f"skipped the checkpoint of step {step} ({src}: {reason}); moved it to {dst}."

    def check_saves(self) -> None:
        """Raise at once when an asynchronous checkpoint write failed (a full disk, a lost mount),
        instead of training on without checkpoints."""
        try:
            self.manager.check_for_errors()
        except Exception as e:
            cause, reasons = e, []
            while cause is not None:
                reasons.append(str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__)
                cause = cause.__cause__ or cause.__context__
            reason = next((r for r in reasons if "No space left" in r), reasons[-1])
            raise SaveFailed(
                f"a checkpoint could not be written to {self.ckpt_dir} ({reason}); training stopped at step "
                f"{self.state.step}, the last complete checkpoint is step {self.manager.latest_step()}"
            ) from None

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
            image = example_image(predictor, c.benchmark, data_dir, dataset=dataset, seed=c.seed)
            files.write_png(os.path.join(self.workdir, "images", f"{tag}.png"), image)
            self.writer.image(self.state.step, "eval/prediction", image)
        return result

    def export(self, out_dir: str | None = None) -> str:
        """The trained head with the frozen encoders as an inference checkpoint."""
        tokenizer = clip_text.tokenizer_files(self.config.clip.checkpoint) if self.config.clip.checkpoint else None
        return bundle.save(
            out_dir or os.path.join(self.workdir, "export"),
            bundle.module_part(self.current_head(), "segic-jax training"),
            bundle.module_part(self.encoder, self.notes["dinov2"]),
            bundle.module_part(self.text_model, self.notes["clip_text"]),
            tokenizer_files=tokenizer or None, overwrite=True,
        )

    # --- the loop -------------------------------------------------------------------------

    def _on_sigterm(self, signum, frame):
        self._stop_requested = True

    def _on_sigint(self, signum, frame):
        """Ctrl-C stops like SIGTERM (checkpoint, then exit); a second one aborts at once."""
        self._interrupts += 1
        if self._interrupts > 1:
            raise KeyboardInterrupt
        if jax.process_count() > 1:
            os.kill(os.getpid(), signal.SIGTERM)  # to jax's notifier: every process stops at the same step
        else:
            self._stop_requested = True
        print("\nstopping after this step with a checkpoint (Ctrl-C again to abort without one)", flush=True)

    def run(self) -> dict:
        from clu import metrics as clu_metrics
        from tqdm.auto import tqdm

        c = self.config
        resumed = self.restore()
        if resumed:
            print(f"resumed from step {self.state.step} in {self.ckpt_dir}", flush=True)
        # In a multi-process job SIGTERM is left to jax's preemption notifier, which tells every process
        # so that all stop at the same step (`reached_preemption`); a handler here would stop one alone.
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() and jax.process_count() == 1 else None
        previous_int = signal.signal(signal.SIGINT, self._on_sigint) if _main_thread() else None
        Metrics = clu_metrics.Collection.create(
            loss=clu_metrics.Average.from_output("loss"),
            loss_mask=clu_metrics.Average.from_output("loss_mask"),
            loss_dice=clu_metrics.Average.from_output("loss_dice"),
            loss_reverse=clu_metrics.Average.from_output("loss_reverse"),
            mask_iou=clu_metrics.Average.from_output("iou"),
        )
        summary: dict[str, Any] = {"resumed_from": self.state.step if resumed else None, **self.notes}
        earlier = self._previous_summary() if resumed else {}
        finished_before = resumed and self.state.step >= self.num_steps
        # a resumed run keeps what the earlier runs measured up to the checkpoint it resumed from
        evals = {k: v for k, v in earlier.get("evaluations", {}).items()
                 if k == "untrained" or (k.startswith("step_") and k[5:].isdigit() and int(k[5:]) <= self.state.step)}
        if c.eval.every_steps and c.eval.at_start and not resumed:
            evals["untrained"] = self.evaluate("untrained")
            print(f"step 0 (untrained): {_format_eval(evals['untrained'])}", flush=True)
        losses: list[float] = list(earlier.get("train_losses", []))[: self.state.step // c.log.every_steps]
        metrics = None
        start_step, t0 = self.state.step, time.time()
        bar = tqdm(total=self.num_steps, initial=self.state.step, desc="training",
                   disable=not self.is_main or not c.log.progress or finished_before)
        stopped = False
        try:
            while self.state.step < self.num_steps:
                if self._stop_requested or self.manager.reached_preemption(self.state.step):
                    if self.manager.latest_step() != self.state.step:
                        self.save(force=True)
                    self.manager.wait_until_finished()
                    stopped = True
                    print(f"stopped at step {self.state.step}: checkpoint written", flush=True)
                    break
                batch, _ = self.next_batch()
                out = self.train_step(batch)
                update = Metrics.single_from_model_output(loss=out.loss, loss_mask=out.loss_mask, loss_dice=out.loss_dice,
                                                          loss_reverse=out.loss_reverse, iou=out.iou)
                metrics = update if metrics is None else metrics.merge(update)
                step = self.state.step
                bar.update(1)
                if step % c.log.every_steps == 0 or step == self.num_steps:
                    values = metrics.compute()
                    values = {k: float(v) for k, v in values.items()}
                    losses.append(values["loss"])
                    elapsed = time.time() - t0
                    rate = (step - start_step) / max(elapsed, 1e-9)
                    values.update(learning_rate=float(self.schedule(step - 1)), steps_per_second=rate)
                    self.writer.scalars(step, {f"train/{k}": v for k, v in values.items()})
                    eta = (self.num_steps - step) / max(rate, 1e-9)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", iou=f"{values['mask_iou']:.3f}")
                    if not c.log.progress:
                        print(f"step {step}/{self.num_steps} loss {values['loss']:.4f} mask IoU {values['mask_iou']:.3f} "
                              f"{rate:.2f} steps/s ETA {eta:.0f}s", flush=True)
                    metrics = None
                if c.checkpoint.every_steps and step % c.checkpoint.every_steps == 0:
                    self.save()
                self.check_saves()
                if c.eval.every_steps and (step % c.eval.every_steps == 0 or step == self.num_steps):
                    evals[f"step_{step}"] = self.evaluate(f"step_{step:06d}")
                    bar.write(f"step {step}: {_format_eval(evals[f'step_{step}'])}")
            if not stopped:
                if self.manager.latest_step() != self.state.step:
                    self.save(force=True)
                self.manager.wait_until_finished()
            self.check_saves()
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if previous_int is not None:
                signal.signal(signal.SIGINT, previous_int)
        if finished_before and earlier.get("step") == self.state.step and not earlier.get("stopped_early") \
                and os.path.isdir(earlier.get("export") or ""):
            # nothing was trained: the finished run's summary and export stand as they are
            self.writer.flush()
            return {**earlier, "already_finished": True}
        steps = self.state.step - start_step
        summary.update(
            step=self.state.step, num_steps=self.num_steps, stopped_early=stopped, train_losses=losses,
            seconds=time.time() - t0, steps_this_run=steps,
            steps_per_second=steps / max(time.time() - t0, 1e-9) if steps else earlier.get("steps_per_second", 0.0),
            evaluations=evals,
        )
        if not stopped and self.is_main:
            summary["export"] = self.export()
        if self.is_main:
            files.write_json(os.path.join(self.workdir, "summary.json"), _jsonable(summary))
        self.writer.flush()
        return summary

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
            self.manager.close()
            self.writer.close()
        finally:
            if self.lock is not None:
                self.lock.release()


class SaveFailed(RuntimeError):
    """An asynchronous checkpoint write failed; the message says where and why."""


# exit status of `main.py --mode train` when a signal stopped the run before its last step (after a
# checkpoint): EX_TEMPFAIL, so that a scheduler can tell "requeue me" from success and from failure
EXIT_STOPPED_EARLY = 75


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


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
        if "untrained" in evals:
            lines.append(f"  untrained model            {evals['untrained']['miou']:6.1f}")
        lines.append(f"  trained model              {last['miou']:6.1f}")
        lines.append(f"  propagated-mask baseline   {last['baseline_miou']:6.1f}  (similarity > 0.5, no decoder)")
    if summary.get("export"):
        lines.append(f"inference checkpoint: {summary['export']} (python main.py --mode predict --checkpoint ...)")
    return "\n".join(lines)
