"""segic-jax entry point.

    python main.py --config configs/segic.py:demo --workdir /tmp/segic_demo

--mode correspondence (the only mode so far) encodes a built-in synthetic reference/target pair
with DINOv2 and writes the propagated mask (cosine similarity to the reference mask's mean
feature) and its peak, SEGIC's dense and point prompts. See configs/segic.py for the fields.
"""

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configuration file, e.g. configs/segic.py:demo", lock_config=True)
flags.DEFINE_string("workdir", None, "directory for outputs")
flags.DEFINE_enum("mode", "correspondence", ["correspondence"], "what to run")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from segic_jax.inference import correspondence

    correspondence.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
