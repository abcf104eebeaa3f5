r"""segic-jax entry point.

    python main.py --config configs/segic.py --workdir /tmp/segic_demo
    python main.py --config configs/segic.py:paper --workdir runs/segic --config.data.data_dir=data/ ...
    python main.py --mode eval --config configs/eval.py:paper --workdir out/eval --config.checkpoint=...
    python main.py --mode predict --checkpoint ckpt/segic --workdir out/ \
        --reference ref.jpg --reference_mask ref.png --target photos/
    python main.py --mode serve --checkpoint ckpt/segic

--mode train (default) trains SEGIC as the config says (configs/segic.py; the default `demo`
variant trains on the built-in synthetic dataset on a CPU in minutes); it resumes from the
workdir's latest checkpoint and exports an inference checkpoint to workdir/export. SIGTERM or
Ctrl-C stop it after a checkpoint, with exit status 75 (run the same command to resume); one
workdir holds one run at a time (workdir/.lock). Train and eval run as one job of several
processes when the environment describes one (segic_jax/distributed.py; README, Several hosts).
--mode eval runs the benchmarks of configs/eval.py on a checkpoint (segic_jax/evaluation/evaluate.py).
--mode correspondence encodes a built-in synthetic reference/target pair with DINOv2 and writes
the propagated mask (cosine similarity to the reference mask's mean feature) and its peak,
SEGIC's dense and point prompts.
--mode predict segments the target image (or every image of a folder, e.g. a video's frames) with
a converted SEGIC checkpoint, streaming: reading, the device and writing overlap; see
segic_jax/inference/segment_files.py for what it writes (--outputs) and --batch_size.
--mode serve starts the interactive page (segic_jax/serve.py) at http://127.0.0.1:7860: references
with painted or uploaded masks, several targets, overlays, propagated masks and mask files; without
--checkpoint it serves the demo model that the first command above trains (/tmp/segic_demo/export).
Every job starts here; the `python -m segic_jax.<tool>` commands (convert, pretrained, data.build)
are the offline tools that prepare checkpoints and datasets.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configuration file, e.g. configs/segic.py:demo", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for outputs (every mode but serve)")
flags.DEFINE_enum("mode", "train", ["train", "eval", "correspondence", "predict", "serve"], "what to run")
flags.DEFINE_string(
    "checkpoint", None,
    "predict, serve: a converted SEGIC directory (python -m segic_jax.convert segic), a training run's export/, or "
    "a release name (segic_dinov2_l_80kx12e, segic_dinov2_l_160kx12e: fetched and converted once into "
    "~/.cache/segic_jax); "
    "serve without it: the demo export /tmp/segic_demo/export",
)
flags.DEFINE_multi_string("reference", [], "predict: a reference image (repeat for several)")
flags.DEFINE_multi_string("reference_mask", [], "predict: the mask of each --reference, in the same order")
flags.DEFINE_multi_string("class_name", [], "predict: class of each --reference (same name = shots of one class)")
flags.DEFINE_string("target", None, "predict: target image or folder of images")
flags.DEFINE_bool("instance_prompt", False, "predict: use SEGIC's instance prompt instead of class names")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "predict, serve: compute dtype of the encoders and head")
flags.DEFINE_integer("batch_size", 2, "predict, serve: targets per device batch (larger keeps an accelerator busier)", lower_bound=1)
flags.DEFINE_list("outputs", ["masks", "overlay", "propagated"], "predict: files to write per target (masks, overlay, propagated)")
flags.DEFINE_bool("outputs_beside_targets", False,
                  "predict: allow --workdir to be (or be inside) the target folder (no output may replace a target)")
flags.DEFINE_string(
    "compilation_cache", "~/.cache/segic_jax/xla",
    "JAX's persistent compilation cache: compiled programs are kept here and reused by later runs ('' = off; "
    "JAX_COMPILATION_CACHE_DIR, when set, takes precedence)",
)
flags.DEFINE_string("host", "127.0.0.1", "serve: address to listen on (0.0.0.0: every interface)")
flags.DEFINE_integer("port", 7860, "serve: port of the page", lower_bound=1, upper_bound=65535)
flags.DEFINE_bool("share", False, "serve: also a public link through Gradio's servers")
flags.DEFINE_float("max_upload_mb", 50.0, "serve: the largest upload the page accepts, in MB", lower_bound=0.001)


def usage_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # orbax and grain log every save at INFO; -v 0 shows it
        logging.set_verbosity(logging.WARNING)
    if FLAGS.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        import jax

        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
    if FLAGS.mode == "serve":
        from segic_jax import serve

        if FLAGS.workdir:
            usage_error("--mode serve writes no files: drop --workdir (the model is --checkpoint)")
        status = serve.run(FLAGS.checkpoint, host=FLAGS.host, port=FLAGS.port, share=FLAGS.share, dtype=FLAGS.dtype,
                           batch_size=FLAGS.batch_size, max_upload_mb=FLAGS.max_upload_mb)
        if status:
            sys.exit(status)
        return
    if not FLAGS.workdir:
        usage_error(f"--mode {FLAGS.mode} needs --workdir, the folder for its outputs")
    if FLAGS.mode == "predict":
        from segic_jax.inference import segment_files

        if not FLAGS.checkpoint or not FLAGS.target:
            usage_error("--mode predict needs --checkpoint and --target")
        try:
            outputs = segment_files.check_outputs(FLAGS.outputs)
            # every input is read and checked first: a wrong path fails at once, not after loading the model
            inputs = segment_files.prepare(FLAGS.reference, FLAGS.reference_mask, FLAGS.target, FLAGS.class_name)
            segment_files.check_out_dir(FLAGS.workdir, FLAGS.target, inputs, outputs, FLAGS.outputs_beside_targets)
            predictor = load_predictor(FLAGS.checkpoint, FLAGS.dtype, FLAGS.batch_size)
            written = segment_files.run(predictor, inputs, out_dir=FLAGS.workdir,
                                        instance_prompt=FLAGS.instance_prompt, outputs=outputs)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except OSError as e:  # a write failed mid-run (disk full, folder removed): each file is whole or absent
            print(f"error: cannot write to --workdir {FLAGS.workdir}: {e.strerror or e}"
                  + (f" ({e.filename})" if e.filename else ""), file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted: the targets segmented so far are written", file=sys.stderr)
            sys.exit(130)
        print(f"wrote {len(written)} file{'' if len(written) == 1 else 's'} to {FLAGS.workdir}")
        return
    if FLAGS.config is None:
        example = "configs/eval.py:paper" if FLAGS.mode == "eval" else "configs/segic.py:demo"
        usage_error(f"--mode {FLAGS.mode} needs --config, e.g. {example} (python main.py --help)")
    if FLAGS.mode == "correspondence":
        from segic_jax.inference import correspondence_demo

        correspondence_demo.run(FLAGS.config, FLAGS.workdir)
        return
    from segic_jax import distributed
    from segic_jax.training.trainer import EXIT_STOPPED_EARLY

    # in a multi-process job a failing process leaves at once (the others follow), not at jax's shutdown barrier
    with distributed.leave_together(agreed_statuses=(0, EXIT_STOPPED_EARLY)):
        try:
            distributed.initialize()
            if FLAGS.mode == "eval":
                from segic_jax.evaluation import evaluate

                results = evaluate.run(FLAGS.config, FLAGS.workdir)
                if results["complete"] and distributed.is_main():
                    print(f"wrote {FLAGS.workdir}/results.md")
            else:
                from segic_jax.training import trainer
                from segic_jax.training.checkpointing import SaveFailed

                try:
                    summary = trainer.train(FLAGS.config, FLAGS.workdir)
                except SaveFailed as e:
                    print(f"error: {e}", file=sys.stderr)
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(1)  # orbax's threads of the failed write may never end: do not wait for them
                if summary.get("stopped_early"):
                    sys.exit(EXIT_STOPPED_EARLY)  # a checkpoint was written: run the same command to resume
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)


def load_predictor(checkpoint: str, dtype: str, batch_size: int):
    """A converted directory, or the name of a release (fetched and converted once, segic_jax.pretrained)."""
    from segic_jax import pretrained
    from segic_jax.inference.predictor import Predictor

    return Predictor.from_checkpoint(pretrained.checkpoint_path(checkpoint), dtype=dtype, batch_size=batch_size)


HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")


def print_help() -> None:
    """The usage text above, as written, then this program's flags (absl's own --help reflows the
    examples and exits 1)."""
    print(__doc__.strip() + "\n\nflags:\n" + FLAGS.main_module_help())


def _config_fields(spec: str) -> list[str]:
    """Every dotted field of the config file `spec` (path[:variant]), loaded as --config loads it."""
    import importlib.util

    path, _, variant = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_config_for_errors", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    from segic_jax.training.workdir import flat_fields

    return list(flat_fields(module.get_config(variant) if variant else module.get_config()))


def _flag_error(argv, error: Exception) -> str:
    """One line for a bad command line: the unknown --config field (with the nearest names), or absl's message."""
    import difflib

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[argv.index("--config") + 1]
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if spec and overrides:
        try:
            fields = _config_fields(spec)
        except Exception:  # the config file itself is broken: absl's message says how
            fields = None
        for field in overrides if fields else []:
            if field not in fields:
                near = difflib.get_close_matches(field, fields, n=3)
                return (f"--config.{field}: {spec.partition(':')[0]} has no field {field}"
                        + (f"; did you mean {', '.join(near)}?" if near else ""))
    message = str(error).strip().splitlines()
    return message[-1] if message else type(error).__name__


def parse_flags(argv):
    """absl's parsing, with a bad flag or config field reported in one line (exit 2), not a chained traceback."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: {_flag_error(argv, e)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    if any(a in HELP_FLAGS for a in sys.argv[1:]):
        print_help()
        sys.exit(0)
    app.run(main, flags_parser=parse_flags)
