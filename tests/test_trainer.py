"""The training loop on tiny random models: exact resume (also after SIGTERM), partial checkpoints,
the exported model, the paper mixture on fake datasets, main.py, 8 devices vs 1, clear errors."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from configs import segic as segic_config
from segic_jax.evaluation.evaluate import model_predictor
from segic_jax.inference.predictor import Predictor
from segic_jax.data import build as build_lib
from segic_jax.data import mixture
from segic_jax.data.prompts import PromptTable
from segic_jax.training import mesh as mesh_lib
from segic_jax.training import checkpointing
from segic_jax.training.checkpointing import SaveFailed
from segic_jax.training import step as step_lib
from segic_jax.training import trainer as trainer_lib
from segic_jax.training.writer import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DATA = "synthetic_incontext/tiny"
TINY_OVERRIDES = [
    "--config.image_size=56", "--config.dinov2.depth=1", "--config.clip.width=32",
    f"--config.data.mixture=(('{TINY_DATA}', 'train', 'class', 1.0), ('{TINY_DATA}', 'train', 'instance', 1.0))",
    "--config.train.global_batch_size=8", "--config.train.samples_per_epoch=64",
    "--config.train.num_points=256", "--config.train.reverse_context=True", "--config.eval.every_steps=0", "--config.log.every_steps=1",
    "--config.log.progress=False",
]


def tiny_config(data_dir, **changes):
    c = segic_config.get_config("demo")
    c.image_size = 56  # feature grid 4, decoder logits 16 x 16
    c.dinov2.depth = 1
    c.clip.width, c.clip.depth = 32, 1
    c.data.data_dir = str(data_dir)
    c.data.mixture = ((TINY_DATA, "train", "class", 1.0), (TINY_DATA, "train", "instance", 1.0))
    c.data.max_instances = 2
    c.train.global_batch_size = 4
    c.train.samples_per_epoch = 40
    c.train.num_points = 256
    c.train.learning_rate = 1e-3
    c.train.reverse_context = True  # the paper's two passes (the demo skips the second for speed)
    c.checkpoint.every_steps = 2
    c.checkpoint.use_async = False
    c.log.every_steps = 1
    c.log.progress = False
    c.eval.benchmark = "synthetic"
    c.eval.dataset = TINY_DATA
    c.eval.episodes = 4
    c.eval.every_steps = 0
    c.eval.at_start = False
    for key, value in changes.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    build_lib.ensure_builtin([TINY_DATA], str(root))
    return root


def _losses(workdir):
    return {r["step"]: r["train/loss"] for r in read_metrics(os.path.join(workdir, "logs")) if "train/loss" in r}


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run_full")
    summary = trainer_lib.train(tiny_config(data_dir, **{"train.num_steps": 6}), str(workdir))
    return workdir, summary


def test_training_runs_logs_and_exports(uninterrupted):
    workdir, summary = uninterrupted
    losses = _losses(workdir)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(np.isfinite(list(losses.values())))
    assert summary["step"] == 6 and not summary["stopped_early"]
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [2, 4, 6]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "logs"))
    assert json.loads((workdir / "summary.json").read_text())["step"] == 6


@pytest.mark.slow
def test_resume_after_sigterm_continues_exactly(uninterrupted, data_dir, tmp_path):
    full_dir, _ = uninterrupted
    full = _losses(full_dir)

    class Preempted(trainer_lib.Trainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            if self.state.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler would; the handler only sets a flag
            return out

    config = tiny_config(data_dir, **{"train.num_steps": 6})
    before = signal.getsignal(signal.SIGTERM)
    first = Preempted(config, str(tmp_path))
    try:
        summary = first.run()
    finally:
        first.close()
    assert summary["stopped_early"] and summary["step"] == 3
    assert not (tmp_path / "export").exists()  # nothing exported from an interrupted run
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is given back

    resumed = trainer_lib.train(config, str(tmp_path))
    assert resumed["resumed_from"] == 3 and resumed["step"] == 6
    losses = _losses(tmp_path)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):  # same batches, same points, same parameters: bit for bit
        assert losses[step] == full[step], (step, losses[step], full[step])


def test_a_partially_written_checkpoint_is_never_loaded(uninterrupted, data_dir, tmp_path):
    import shutil

    full_dir, _ = uninterrupted
    shutil.copy(full_dir / "config.json", tmp_path / "config.json")
    shutil.copytree(full_dir / "checkpoints" / "4", tmp_path / "checkpoints" / "4")
    # a save of step 6 that was cut short: orbax writes under a temporary name, renamed when done
    shutil.copytree(full_dir / "checkpoints" / "6", tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234")
    trainer = trainer_lib.Trainer(tiny_config(data_dir, **{"train.num_steps": 6}), str(tmp_path))
    try:
        assert trainer.restore() and trainer.state.step == 4
    finally:
        trainer.close()


def test_fine_tuning_starts_from_a_converted_model_and_names_what_does_not_fit(uninterrupted, data_dir, tmp_path):
    """Your own data in each of its three layouts, built, fine-tuned on from an export and scored on
    its held-out part through main.py, as docs/your_data.md tells a user to."""
    from segic_jax import checkpoints
    from segic_jax.models import bundle, segic

    from segic_jax.data.synthetic import write_user_layouts

    _, summary = uninterrupted
    export = summary["export"]
    layouts = write_user_layouts(str(tmp_path / "yours"))
    user_data = tmp_path / "user_data"
    names = {"masks": "user_masks/t", "coco": "user_coco/t", "folders": "user_folders/t"}
    # held-out classes, and held-out images (half of them: each class keeps a pair to make an episode of)
    for layout, split in (("masks", "classes"), ("coco", "images"), ("folders", "classes")):
        assert build_lib.main([names[layout], "--manual_dir", layouts[layout], "--data_dir", str(user_data),
                               "--split_by", split, *(["--test_fraction", "0.5"] if split == "images" else [])]) == 0
    mixture = tuple((name, "train", episodes, 1.0) for name in names.values() for episodes in ("class", "instance"))
    config = tiny_config(user_data, **{"train.init_from": export, "data.mixture": mixture})
    tuned = trainer_lib.Trainer(config, str(tmp_path / "start"))  # the encoders are the export's, not the config's
    try:
        saved = bundle.load(export)
        for model, here in ((saved.head, tuned.head), (saved.encoder, tuned.encoder), (saved.text_model, tuned.text_model)):
            want, got = checkpoints.module_params(model), checkpoints.module_params(here)
            assert sorted(want) == sorted(got)
            for name in want:
                np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    finally:
        tuned.close()

    # the commands of docs/your_data.md: configs/segic.py:finetune from the export, on all three builds
    run = _main(tmp_path / "tune", user_data, f"--config.train.init_from={export}", f"--config.data.mixture={mixture!r}",
                "--config.train.num_steps=2", "--config.eval.dataset=user_coco/t", "--config.eval.episodes=4",
                "--config.eval.every_steps=2", "--config.eval.images=False", "--config.checkpoint.every_steps=0",
                config="segic.py:finetune")
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "tune" / "summary.json").read_text())
    assert result["init_from"] == export and result["step"] == 2
    assert set(result["evaluations"]) == {"untrained", "step_2"}
    assert "before fine-tuning" in run.stdout and "fine-tuned model" in run.stdout and "untrained" not in run.stdout
    tuned_head = checkpoints.module_params(segic.load(os.path.join(result["export"], "head")))
    start = checkpoints.module_params(saved.head)
    assert any(not np.array_equal(tuned_head[k], start[k]) for k in start)  # it trained from there

    def custom_eval(workdir, *extra):  # the eval command of docs/your_data.md on the fine-tuned export
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "main.py"), "--mode", "eval", "--config",
             os.path.join(ROOT, "configs", "eval.py:custom"), "--workdir", str(workdir), f"--config.data_dir={user_data}",
             f"--config.checkpoint={result['export']}", *extra],
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)

    for name in ("user_masks/t", "user_folders/t"):  # the held-out classes, scored by the eval command
        out = tmp_path / "eval" / name.split("/")[0]
        scored = custom_eval(out, f"--config.custom_dataset={name}", "--config.episodes=4", "--config.shots=(1,)",
                             "--config.plot=False")
        assert scored.returncode == 0, scored.stderr[-3000:]
        scores = json.loads((out / "results.json").read_text())
        assert scores["complete"] and scores["benchmarks"]["custom"]["1-shot"]["episodes"] == 4, scores
        assert "your dataset's test split" in (out / "results.md").read_text()
    blank = custom_eval(tmp_path / "eval2")
    assert blank.returncode == 1 and re.search(r"the custom benchmark evaluates a dataset you built .*--config\.custom_dataset",
                                               blank.stderr), blank.stderr[-2000:]

    with pytest.raises(ValueError, match=r"init_from brings its own encoders"):
        trainer_lib.Trainer(tiny_config(data_dir, **{"train.init_from": export, "clip.checkpoint": export}), str(tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match=r"init_from=.*nope: no such directory, nor a release name"):
        trainer_lib.Trainer(tiny_config(data_dir, **{"train.init_from": str(tmp_path / "nope")}), str(tmp_path / "y"))
    # a head whose tensors do not fit: each is named with both shapes
    other = tmp_path / "other"
    import shutil

    shutil.copytree(export, other)
    head = segic.load(str(other / "head"))
    cfg = dataclasses.replace(head.cfg, dim=head.cfg.dim // 2)
    small = segic.SegicHead(cfg, rngs=__import__("flax").nnx.Rngs(0))
    shutil.rmtree(other / "head")
    checkpoints.save_model(str(other / "head"), segic.SegicHead, cfg, checkpoints.module_params(small))
    with pytest.raises(ValueError, match=r"the head of .*other was built otherwise \(dim: 128 there, 256 here\)"):
        trainer_lib.Trainer(tiny_config(data_dir, **{"train.init_from": str(other)}), str(tmp_path / "z"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_exported_model_loads_in_the_predictor(uninterrupted, data_dir, rng):
    workdir, summary = uninterrupted
    trainer = trainer_lib.Trainer(tiny_config(data_dir, **{"train.num_steps": 6}), str(workdir))
    try:
        assert trainer.restore() and trainer.state.step == 6
        in_memory = model_predictor(trainer.current_head(), trainer.encoder, trainer.text_model, trainer.tokenizer)
    finally:
        trainer.close()
    loaded = Predictor.from_checkpoint(summary["export"], batch_size=1)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    mask = np.zeros((70, 90), bool)
    mask[20:50, 30:60] = True
    target = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a = in_memory.segment([target], in_memory.encode_context([image], [mask], class_names=["thing"]))[0]
    b = loaded.segment([target], loaded.encode_context([image], [mask], class_names=["thing"]))[0]
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)


def test_training_moves_the_logged_metrics(uninterrupted, data_dir, tmp_path):
    workdir, _ = uninterrupted
    records = [r for r in read_metrics(os.path.join(workdir, "logs")) if "train/loss" in r]
    assert all(0.0 <= r["train/mask_iou"] <= 1.0 for r in records)
    assert all(r["train/learning_rate"] == pytest.approx(1e-3) for r in records)
    assert len({r["train/loss"] for r in records}) == len(records)  # a fresh batch every step


@pytest.mark.slow
def test_periodic_evaluation_writes_scores_and_an_image(data_dir, tmp_path, capsys):
    config = tiny_config(data_dir, **{"train.num_steps": 2, "eval.every_steps": 2, "eval.at_start": True})
    summary = trainer_lib.train(config, str(tmp_path))
    assert set(summary["evaluations"]) == {"untrained", "step_2"}
    for result in summary["evaluations"].values():
        assert 0 <= result["miou"] <= 100 and 0 <= result["baseline_miou"] <= 100
    assert (tmp_path / "images" / "step_000002.png").exists() and (tmp_path / "images" / "untrained.png").exists()
    logged = [r for r in read_metrics(os.path.join(tmp_path, "logs")) if "eval/miou" in r]
    assert [r["step"] for r in logged] == [0, 2]

    # running the finished run again trains nothing and keeps its summary, export and table
    kept = (tmp_path / "summary.json").read_bytes()
    exported = os.stat(tmp_path / "export").st_mtime_ns
    logs = sorted(os.listdir(tmp_path / "logs"))
    capsys.readouterr()
    again = trainer_lib.train(config, str(tmp_path))
    assert again["already_finished"] and again["evaluations"] == summary["evaluations"]
    assert sorted(os.listdir(tmp_path / "logs")) == logs  # no new (empty) event file
    assert "resumed from" not in capsys.readouterr().out
    assert (tmp_path / "summary.json").read_bytes() == kept
    assert os.stat(tmp_path / "export").st_mtime_ns == exported
    table = trainer_lib.report(again, config)
    assert "finished run (2/2 steps" in table and f"{summary['evaluations']['step_2']['miou']:6.1f}" in table
    assert f"{summary['evaluations']['untrained']['miou']:6.1f}" in table


@pytest.mark.slow
def test_paper_mixture_runs_on_fake_datasets_in_their_real_formats(tmp_path):
    from fake_datasets import write_ade, write_coco, write_coco2014, write_lvis, build_args, fake_splits

    from segic_jax.data import build as build_cli

    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    write_coco2014(str(tmp_path / "coco14"), rng)
    write_ade(str(tmp_path / "ade"), rng)
    write_coco(str(tmp_path / "coco"), rng)
    write_lvis(str(tmp_path / "lvis"), rng)
    os.rename(tmp_path / "lvis" / "lvis_v1_val.json", tmp_path / "lvis" / "lvis_v1_train.json")
    for name, folder in (("coco20i_semantic", "coco14"), ("ade20k_semantic", "ade"), ("coco_instances", "coco"),
                         ("lvis_instances", "lvis")):
        split = "train" if name == "lvis_instances" else None  # its annotations were renamed to the train file
        assert build_cli.main(build_args(name, str(tmp_path / folder), str(data), split)) == 0
    c = segic_config.get_config("paper")
    assert c.data.mixture == mixture.PAPER and c.train.global_batch_size == 32
    # the paper recipe, on tiny random models: only the sizes change
    c.image_size, c.dtype = 56, "float32"
    c.dinov2.arch, c.dinov2.depth = "vits14", 1
    c.clip.width, c.clip.depth = 32, 1
    c.data.data_dir, c.data.workers = str(data), 0
    c.train.global_batch_size, c.train.num_steps, c.train.num_points = 4, 2, 256
    c.eval.every_steps = 0
    c.log.progress = False
    summary = trainer_lib.train(c, str(tmp_path / "run"))
    assert summary["step"] == 2 and all(np.isfinite(summary["train_losses"]))
    trainer = trainer_lib.Trainer(c, str(tmp_path / "run2"))
    try:
        prompts = trainer.data.prompts
        batches = [trainer.next_batch()[1] for _ in range(3)]
    finally:
        trainer.close()
    assert prompts[:2] == ["", "please segment the instances"] and any(p.startswith("a photo of a ") for p in prompts)
    kinds = np.concatenate([b["is_instance"] for b in batches])
    assert 0 < kinds.mean() < 1


def test_text_prompts_follow_the_episode_kind(rng):
    table = PromptTable(["cat", "dog", "cat"])
    assert table.prompts == ["", "please segment the instances", "a photo of a cat", "a photo of a dog"]
    draws = np.random.default_rng(0).random(403)
    chosen = table.choose(draws, np.array([True] * 3 + [False] * 400), [""] * 3 + ["dog"] * 400, 0.75)
    assert (chosen[:3] == 1).all()
    np.testing.assert_array_equal(chosen[3:], np.where(draws[3:] < 0.75, 3, 0))  # the class name with p 0.75
    assert (table.choose(rng.random(1), np.array([False]), [b"cat"], 1.0) == 2).all()


def test_bad_configs_and_missing_datasets_give_clear_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"config.data.mixture entry \('coco_instances', 'train'\)"):
        trainer_lib.Trainer(tiny_config(data_dir, **{"data.mixture": (("coco_instances", "train"),)}), str(tmp_path / "w"))
    with pytest.raises(ValueError, match="episodes one of semantic_by_class, semantic_by_image, instance, class"):
        mixture.parts((("ade20k_semantic", "train", "semantic", 1.0),))
    with pytest.raises(ValueError, match="config.data.mixture has no positive weight"):
        mixture.parts((("ade20k_semantic", "train", "semantic_by_image", 0.0),))
    with pytest.raises(ValueError, match=r"config.data.semantic_scale_range must be \(low, high\) with 0 < low <= high"):
        trainer_lib.Trainer(tiny_config(data_dir, **{"data.semantic_scale_range": (2.0, 1.0)}), str(tmp_path / "w"))
    with pytest.raises(FileNotFoundError, match=r"(?s)dataset coco_instances is not built under .*segic_jax.data.build coco_instances --manual_dir"):
        trainer_lib.Trainer(tiny_config(tmp_path / "empty", **{"data.mixture": (("coco_instances", "train", "instance", 1.0),)}), str(tmp_path / "w"))
    with pytest.raises(ValueError, match="config.mesh.fsdp 3 must divide the device count"):
        mesh_lib.make_mesh(3 * jax.device_count())
    with pytest.raises(ValueError, match="multiple of 14"):
        trainer_lib.Trainer(tiny_config(data_dir, image_size=50), str(tmp_path / "w"))
    with pytest.raises(ValueError, match="config.train.remat_rows must be >= 0, got -1"):
        trainer_lib.Trainer(tiny_config(data_dir, **{"train.remat_rows": -1}), str(tmp_path / "w"))
    assert not (tmp_path / "w" / "checkpoints").exists() or not os.listdir(tmp_path / "w" / "checkpoints")


def _main(workdir, data_dir, *extra, devices=1, config="segic.py:demo"):
    env = dict(os.environ, PYTHONPATH=ROOT)
    if devices > 1:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), "--config", os.path.join(ROOT, "configs", config),
         "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *TINY_OVERRIDES, *extra],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )


@pytest.mark.slow
def test_main_trains_and_eight_devices_match_one(data_dir, tmp_path):
    one = _main(tmp_path / "one", data_dir, "--config.train.num_steps=2")
    assert one.returncode == 0, one.stderr[-3000:]
    # data parallel over 4, the frozen encoder split over 2
    eight = _main(tmp_path / "eight", data_dir, "--config.train.num_steps=2", "--config.mesh.fsdp=2", devices=8)
    assert eight.returncode == 0, eight.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4, abs=1e-5), (step, a, b)


def test_main_rejects_unknown_fields_and_reports_missing_data(tmp_path):
    bad = _main(tmp_path / "w", tmp_path / "nowhere", "--config.train.no_such_field=1")
    assert bad.returncode != 0 and "no_such_field" in bad.stderr
    missing = _main(tmp_path / "w", tmp_path / "nowhere", "--config.data.mixture=(('coco_instances', 'train', 'instance', 1.0),)")
    assert missing.returncode == 1 and "coco_instances" in missing.stderr and "segic_jax.data.build" in missing.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_exported_model_runs_the_eval_command(uninterrupted, data_dir, tmp_path):
    _, summary = uninterrupted
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), "--mode", "eval",
         "--config", os.path.join(ROOT, "configs", "eval.py:synthetic"), "--workdir", str(tmp_path / "eval"),
         f"--config.checkpoint={summary['export']}", f"--config.data_dir={data_dir}", "--config.episodes=4"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    scores = results["benchmarks"]["synthetic"]["1-shot"]
    assert scores["complete"] and scores["episodes"] == 4 and 0 <= scores["miou"] <= 100
    assert (tmp_path / "eval" / "results.md").exists()


def test_the_step_compiles_once(data_dir, tmp_path, monkeypatch):
    # same shapes and shardings every step: a second trace of the step fails
    monkeypatch.setattr(step_lib, "train_step", chex.assert_max_traces(step_lib.train_step, n=1))
    trainer = trainer_lib.Trainer(tiny_config(data_dir, **{"train.num_steps": 3}), str(tmp_path))
    try:
        for _ in range(3):
            batch, _ = trainer.next_batch()
            jax.block_until_ready(trainer.train_step(batch).loss)
    finally:
        trainer.close()


def test_one_run_per_workdir_and_a_resume_keeps_its_config(uninterrupted, data_dir, tmp_path):
    import shutil

    from segic_jax.training import workdir as workdir_lib

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    held = workdir_lib.Lock(str(workdir))
    try:
        with pytest.raises(workdir_lib.WorkdirBusy, match=f"in use by process {os.getpid()}"):
            trainer_lib.Trainer(tiny_config(data_dir, **{"train.num_steps": 6}), str(workdir))
    finally:
        held.release()
    # a lock whose process died (a killed run) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (workdir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": __import__("socket").gethostname()}))
    changed = tiny_config(data_dir, **{"train.num_steps": 6, "train.learning_rate": 2e-3, "data.max_instances": 3})
    with pytest.raises(ValueError, match=r"data\.max_instances: 2 -> 3; train\.learning_rate: 0\.001 -> 0\.002"):
        trainer_lib.Trainer(changed, str(workdir))
    assert not (workdir / ".lock").exists()  # released on the failed start
    # fields that may change on resume: more steps, other logging
    more = trainer_lib.Trainer(tiny_config(data_dir, **{"train.num_steps": 8, "log.every_steps": 2}), str(workdir))
    try:
        assert (workdir / ".lock").exists() and more.restore() and more.state.step == 6
    finally:
        more.close()
    assert not (workdir / ".lock").exists()


def test_a_damaged_checkpoint_is_set_aside_and_the_logs_rewind(uninterrupted, data_dir, tmp_path, capsys):
    import shutil

    full_dir, _ = uninterrupted
    for part in ("checkpoints", "logs", "config.json"):
        copy = shutil.copytree if (full_dir / part).is_dir() else shutil.copyfile
        copy(full_dir / part, tmp_path / part)
    shutil.rmtree(tmp_path / "checkpoints" / "2")
    for path in (tmp_path / "checkpoints" / "6").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # damaged on disk
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4, 5, 6]
    trainer = trainer_lib.Trainer(tiny_config(data_dir, **{"train.num_steps": 6}), str(tmp_path))
    try:
        assert trainer.restore() and trainer.state.step == 4
    finally:
        trainer.close()
    out = capsys.readouterr().out
    assert "skipped the checkpoint of step 6" in out and "dropped 2 metric records logged after step 4" in out
    (aside,) = os.listdir(tmp_path / "checkpoints_unreadable")
    assert aside.startswith("6-") and sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]
    assert sorted(_losses(tmp_path)) == [1, 2, 3, 4]  # steps 5 and 6 are logged again by the resumed run


@pytest.mark.slow
def test_ctrl_c_stops_with_a_checkpoint_and_a_failed_save_stops_at_once(data_dir, tmp_path):
    class Interrupted(trainer_lib.Trainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            if self.state.step == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return out

    config = tiny_config(data_dir, **{"train.num_steps": 3, "checkpoint.every_steps": 0})
    first = Interrupted(config, str(tmp_path / "a"))
    try:
        summary = first.run()
    finally:
        first.close()
    assert summary["stopped_early"] and summary["step"] == 1
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints")) == ["1"]

    class DiskFull(trainer_lib.Trainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            if self.state.step == 2:
                def failed():
                    raise RuntimeError("async save failed") from OSError(28, "No space left on device")
                self.checkpoints.manager.check_for_errors = failed
            return out

    second = DiskFull(config, str(tmp_path / "b"))
    try:
        with pytest.raises(SaveFailed, match=r"No space left on device\); training stopped at step 2"):
            second.run()
    finally:
        second.close()


@pytest.mark.slow
def test_a_write_that_fails_in_orbaxs_threads_is_one_error_and_never_hangs(data_dir, tmp_path):
    """As on a full disk: the asynchronous write fails in orbax's background thread, whose sibling
    threads then wait minutes for a signal that never comes. The command says so in one line, exits 1
    at once, and leaves no temporary checkpoint folder."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "_makedirs = os.makedirs\n"
        "def _full(path, *args, **kwargs):\n"
        f"    if {checkpointing.TMP_SUFFIX!r} in os.fspath(path):\n"
        "        _makedirs(path, *args, **kwargs)\n"
        "        raise OSError(28, 'No space left on device', os.fspath(path))\n"
        "    return _makedirs(path, *args, **kwargs)\n"
        "os.makedirs = _full\n"
    )
    workdir = tmp_path / "run"
    argv = [sys.executable, os.path.join(ROOT, "main.py"), "--config", os.path.join(ROOT, "configs", "segic.py:demo"),
            "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *TINY_OVERRIDES,
            "--config.train.num_steps=3", "--config.checkpoint.every_steps=1"]
    t0 = time.time()
    result = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}"),
                            cwd=ROOT, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and re.fullmatch(
        r"error: a checkpoint could not be written to \S+ \(the disk is full: No space left on device \(\S+\)\); "
        r"training stopped at step \d; no checkpoint was completed", errors[0]), result.stderr[-3000:]
    assert time.time() - t0 < 240  # orbax's waiting threads alone would hold the process 5 minutes
    assert os.listdir(workdir / "checkpoints") == [] and not (workdir / ".lock").exists()


@pytest.mark.slow
def test_main_exits_75_when_stopped_before_the_end_and_resumes(data_dir, tmp_path):
    """A scheduler tells "requeue me" (75, a checkpoint was written) from success (0) and failure (1)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    argv = [sys.executable, os.path.join(ROOT, "main.py"), "--config", os.path.join(ROOT, "configs", "segic.py:demo"),
            "--workdir", str(tmp_path), f"--config.data.data_dir={data_dir}", *TINY_OVERRIDES,
            "--config.train.num_steps=50", "--config.checkpoint.every_steps=0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("step 1/50"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == trainer_lib.EXIT_STOPPED_EARLY == 75, err[-2000:]
    assert "checkpoint written" in out and "run again to resume" in out
    (step,) = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert 1 <= step < 50 and not (tmp_path / ".lock").exists()
