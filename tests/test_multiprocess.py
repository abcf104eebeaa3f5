"""Two real processes on this machine, joined by jax.distributed (one CPU device each, gloo
collectives), against one process with two devices, all through main.py: the same losses step
for step; a SIGTERM to one process stops both at one step with a checkpoint, from which a new
two-process job (or one process) continues with the uninterrupted run's losses; the held-out
evaluation during training and `--mode eval`, split over the processes, give the single-process
scores; a process that is killed, frozen or never started makes the others exit with an error
within a bounded time; a manual launch missing its process count or id is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sandbox import free_port
from tiny_checkpoint import save_tiny_checkpoint
from test_trainer import ROOT, TINY_DATA, TINY_OVERRIDES
from segic_jax.data import build as build_lib
from segic_jax.training import trainer as trainer_lib
from segic_jax.training.writer import read_metrics

STEPS = 12
TRAIN = [
    *TINY_OVERRIDES, "--config.train.global_batch_size=4", "--config.train.reverse_context=False",
    f"--config.train.num_steps={STEPS}", "--config.checkpoint.every_steps=0",
    "--config.eval.benchmark=synthetic", f"--config.eval.dataset={TINY_DATA}", "--config.eval.episodes=8",
    f"--config.eval.every_steps={STEPS}", "--config.eval.at_start=True",
]
LIMIT = 300  # seconds any one launch may take before its processes are killed and the test fails

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp_data")
    build_lib.ensure_builtin([TINY_DATA], str(root))
    return root


class Job:
    """`processes` copies of main.py joined as one job (or one plain process), `devices` CPU devices
    each; output to log files (a pipe left unread could block a process)."""

    def __init__(self, logs, args, processes=2, devices=1, only=None, env=None, cache=""):
        port = free_port()
        self.logs = [logs.parent / f"{logs.name}.{i}.log" for i in range(processes)]
        self.procs = {}
        for i in (range(processes) if only is None else [only]):
            e = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
            e["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
            e.pop("JAX_COMPILATION_CACHE_DIR", None)  # the cache is `cache` ("" = none)
            if processes > 1:  # gloo: the CPU collectives across processes (jax 0.10's default, named here)
                e.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
                         JAX_PROCESS_ID=str(i), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
            with open(self.logs[i], "w") as log:
                self.procs[i] = subprocess.Popen([sys.executable, os.path.join(ROOT, "main.py"), *args,
                                                  f"--compilation_cache={cache}"], stdout=log, stderr=subprocess.STDOUT,
                                                 env=e, cwd=ROOT)

    def log(self, i) -> str:
        return self.logs[i].read_text()

    def wait_for(self, i, text, timeout=LIMIT):
        """Until process i has printed `text` (the test fails if every process ends first, or on timeout)."""
        end = time.time() + timeout
        while text not in self.log(i):
            if time.time() > end or all(p.poll() is not None for p in self.procs.values()):
                self.kill()
                pytest.fail(f"process {i} never printed {text!r}:\n" + self.tails())
            time.sleep(0.1)

    def wait(self, timeout=LIMIT) -> dict:
        """{process: exit status}; on timeout every process is killed and the test fails."""
        end = time.time() + timeout
        for p in self.procs.values():
            try:
                p.wait(timeout=max(end - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"still running after {timeout} s:\n" + self.tails())
        return {i: p.returncode for i, p in self.procs.items()}

    def kill(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()

    def tails(self) -> str:
        return "\n".join(f"--- process {i} ---\n{self.log(i)[-3000:]}" for i in self.procs)


def _train(workdir, data_dir, *changes):
    return ["--config", os.path.join(ROOT, "configs", "segic.py:demo"), "--workdir", str(workdir),
            f"--config.data.data_dir={data_dir}", *TRAIN, *changes]


def _losses(workdir):
    records = [r for r in read_metrics(os.path.join(workdir, "logs")) if "train/loss" in r]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), steps  # logged once, by process 0 alone
    return {r["step"]: r["train/loss"] for r in records}


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
    """One process with two devices, uninterrupted."""
    workdir = tmp_path_factory.mktemp("single") / "run"
    job = Job(workdir, _train(workdir, data_dir), processes=1, devices=2)
    assert job.wait() == {0: 0}, job.tails()
    return workdir


@pytest.fixture(scope="module")
def two(data_dir, tmp_path_factory):
    """Two processes with one device each: SIGTERM to process 1 after step 1, then a new job resumes.
    The first job may train on (num_steps may change on resume): where the two stop depends on how
    soon jax's preemption notice reaches them, not on the number of steps left."""
    workdir = tmp_path_factory.mktemp("two") / "run"
    # main.py's persistent compilation cache, which a multi-process CPU job turns off (its processes
    # would reach gloo's first collective too far apart once process 0 finds its programs there)
    cache = workdir.parent / "xla"
    first = Job(workdir.parent / "first", _train(workdir, data_dir, "--config.train.num_steps=1000"), cache=cache)
    first.wait_for(0, "step 1/1000 ")
    first.procs[1].send_signal(signal.SIGTERM)
    assert first.wait() == {0: 75, 1: 75}, first.tails()
    second = Job(workdir.parent / "second", _train(workdir, data_dir), cache=cache)
    assert second.wait() == {0: 0, 1: 0}, second.tails()
    return workdir, first, second


def test_two_processes_train_resume_and_evaluate_as_one(single, two):
    from segic_jax import checkpoints
    from segic_jax.models import segic

    workdir, first, second = two
    stops = {i: [line for line in first.log(i).splitlines() if line.startswith("stopped at step")] for i in (0, 1)}
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops  # both stopped at the same step
    stop = int(stops[0][0].split()[3].rstrip(":"))
    assert 1 < stop < STEPS, stop
    # both saved it (orbax waits for every process before it commits a checkpoint)
    assert (workdir / "checkpoints" / str(stop) / "commit_success.txt").exists()

    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from"] == stop and summary["step"] == STEPS
    expected, losses = _losses(single), _losses(workdir)
    assert sorted(expected) == sorted(losses) == list(range(1, STEPS + 1))
    for step in expected:  # the same global batch, prompts and points: equal up to the order of float sums
        assert losses[step] == pytest.approx(expected[step], rel=1e-5), (step, losses, expected)
    assert len(set(losses.values())) == STEPS

    # held-out evaluations with their episodes split over the two processes: before training (the
    # same parameters: the same counts) and at the end
    reference = json.loads((single / "summary.json").read_text())["evaluations"]
    assert set(summary["evaluations"]) == set(reference) == {"untrained", f"step_{STEPS}"}
    assert summary["evaluations"]["untrained"] == reference["untrained"]
    assert reference["untrained"]["miou"] > 0 and reference["untrained"]["episodes"] == 8
    for key, value in reference[f"step_{STEPS}"].items():
        if isinstance(value, float):
            assert summary["evaluations"][f"step_{STEPS}"][key] == pytest.approx(value, abs=1e-3), key
    assert not (workdir / "eval_records").exists()
    assert (workdir / "images" / f"step_{STEPS:06d}.png").exists()
    assert f"trained {STEPS}/{STEPS} steps" in second.log(0) and "trained" not in second.log(1)  # process 0 reports
    # the compilation cache was off, and said so once per job
    cache_off = f"the persistent compilation cache ({workdir.parent / 'xla'}) is off for this multi-process CPU job"
    assert [job.log(i).count(cache_off) for job in (first, second) for i in (0, 1)] == [1, 0, 1, 0]
    assert not [p for p in (workdir.parent / "xla").rglob("*") if p.is_file()]

    # the export, written by process 0 alone, holds the single-process run's parameters
    one, both = (checkpoints.module_params(segic.load(str(w / "export" / "head"))) for w in (single, workdir))
    assert one.keys() == both.keys()
    for name in one:
        np.testing.assert_allclose(both[name], one[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_the_two_process_checkpoint_resumes_in_one_process(single, two, tmp_path):
    """The data continue from the step alone, so a job may resume on another number of processes."""
    import shutil

    from configs import segic as segic_config

    workdir, _, _ = two
    stop = json.loads((workdir / "summary.json").read_text())["resumed_from"]
    shutil.copytree(workdir / "checkpoints" / str(stop), tmp_path / "checkpoints" / str(stop))
    shutil.copyfile(workdir / "config.json", tmp_path / "config.json")
    config = segic_config.get_config("demo")  # the job's config, as main.py recorded it
    for key, value in json.loads((workdir / "config.json").read_text()).items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = value
    trainer = trainer_lib.Trainer(config, str(tmp_path))  # this process: one process, one device
    try:
        assert trainer.restore() and trainer.state.step == stop
        batch, _ = trainer.next_batch()
        loss = float(trainer.train_step(batch).loss)
    finally:
        trainer.close()
    assert loss == pytest.approx(_losses(single)[stop + 1], rel=1e-5)


def test_evaluation_split_over_two_processes_scores_as_one(data_dir, tmp_path):
    from configs import eval as eval_config
    from segic_jax.evaluation import evaluate

    checkpoint = save_tiny_checkpoint(str(tmp_path / "ckpt"))  # random weights: masks of every size
    args = ["--mode", "eval", "--config", os.path.join(ROOT, "configs", "eval.py:synthetic"),
            f"--config.checkpoint={checkpoint}", f"--config.data_dir={data_dir}", "--config.episodes=8",
            "--config.chunk_size=2", "--config.plot=False"]
    job = Job(tmp_path / "eval", [*args, "--workdir", str(tmp_path / "joint")])
    assert job.wait() == {0: 0, 1: 0}, job.tails()
    joint = json.loads((tmp_path / "joint" / "results.json").read_text())
    assert "wrote" in job.log(0) and "wrote" not in job.log(1)  # process 0 writes the results
    records = os.listdir(tmp_path / "joint" / "records" / "synthetic" / "1shot")
    assert {r.rsplit("-", 1)[1] for r in records if r.startswith("chunk-")} == {"shard0of2.npz", "shard1of2.npz"}

    config = eval_config.get_config("synthetic")
    config.checkpoint, config.data_dir, config.episodes, config.chunk_size, config.plot = (
        checkpoint, str(data_dir), 8, 2, False)
    alone = evaluate.run(config, str(tmp_path / "alone"))
    scores = joint["benchmarks"]["synthetic"]["1-shot"]
    assert scores["episodes"] == 8 and scores["miou"] > 0
    assert joint["benchmarks"] == json.loads(json.dumps(alone["benchmarks"]))  # integer counts: exactly equal


def test_a_killed_process_makes_the_other_exit_within_seconds(data_dir, tmp_path):
    """The survivor's next step fails (its collective with the dead process) and it leaves at once;
    without that it would wait in jax's shutdown barrier until the heartbeat timeout (100 s) and abort."""
    job = Job(tmp_path / "killed", _train(tmp_path / "run", data_dir, "--config.train.num_steps=1000",
                                          "--config.eval.every_steps=0", "--config.eval.at_start=False"))
    job.wait_for(0, "step 1/1000 ")
    job.procs[1].kill()
    killed = time.time()
    status = job.wait(timeout=120)
    waited = time.time() - killed
    assert status[0] not in (0, 75), job.tails()
    assert waited < 60, waited
    assert "error: process 0 of 2 failed: " in job.log(0) and "run the job again" in job.log(0), job.tails()
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_frozen_process_is_declared_dead_after_the_heartbeat_timeout(data_dir, tmp_path):
    """A process that stops answering (here SIGSTOP; a hung host) would hold the others in their
    next collective for ever: jax stops them once its heartbeats are missing for the timeout."""
    checkpoint = save_tiny_checkpoint(str(tmp_path / "ckpt"))
    job = Job(tmp_path / "frozen", ["--mode", "eval", "--config", os.path.join(ROOT, "configs", "eval.py:synthetic"),
                                    f"--config.checkpoint={checkpoint}", f"--config.data_dir={data_dir}",
                                    "--workdir", str(tmp_path / "eval")], env={"SEGIC_JAX_HEARTBEAT_TIMEOUT": "5"})
    try:
        job.wait_for(1, "synthetic/1shot")  # its progress bar: it has joined and is evaluating
        job.procs[1].send_signal(signal.SIGSTOP)
        frozen = time.time()
        while job.procs[0].poll() is None and time.time() - frozen < 120:
            time.sleep(0.2)
        waited = time.time() - frozen
    finally:
        job.kill()
    assert job.procs[0].returncode not in (0, None) and waited < 60, (waited, job.tails())
    assert "stopped sending heartbeats" in job.log(0), job.tails()


def test_a_process_whose_peers_never_come_fails_after_the_init_timeout(data_dir, tmp_path):
    job = Job(tmp_path / "alone", _train(tmp_path / "run", data_dir), only=1, env={"SEGIC_JAX_INIT_TIMEOUT": "5"})
    started = time.time()
    status = job.wait(timeout=120)
    assert status[1] != 0 and time.time() - started < 60, job.tails()
    log = job.log(1)
    assert "joining the job as process 1 of 2 at 127.0.0.1:" in log and "waiting up to 5 s" in log, log[-3000:]
    assert "DEADLINE_EXCEEDED" in log, log[-3000:]


def test_a_manual_launch_without_a_process_count_or_id_is_refused(data_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES="2")
    for extra, said in (({}, "process id of the current process must be defined"),
                        ({"JAX_PROCESS_ID": "2"}, "Got process_id=2, num_processes=2")):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *_train(tmp_path / "run", data_dir)],
                                capture_output=True, text=True, env={**env, **extra}, cwd=ROOT, timeout=LIMIT)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "error: " in result.stderr and said in result.stderr and "set JAX_NUM_PROCESSES" in result.stderr
    assert not (tmp_path / "run").exists()
