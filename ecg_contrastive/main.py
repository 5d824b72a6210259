r"""Command line: train + evaluate (default), evaluate only, or export to PyTorch.

  python -m ecg_contrastive.main --config configs/default.py --workdir runs/demo
  python -m ecg_contrastive.main --config configs/default.py --workdir runs/demo --config.batch_size=128
  python -m ecg_contrastive.main --workdir runs/demo --mode export --export_dir runs/demo/torch
"""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from absl import app, flags, logging as absl_logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally with ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, tb/, eval/.")
flags.DEFINE_enum("mode", "train", ["train", "export"], "train: train and evaluate (resumes if the workdir has a "
                  "checkpoint). export: write a PyTorch folder from the workdir's checkpoint.")
flags.DEFINE_string("export_dir", None, "Output folder for --mode export (default WORKDIR/torch).")
flags.DEFINE_integer("step", None, "Checkpoint step to export (default: latest).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host; reads the "
                  "coordinator from the environment: TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS etc.).")
flags.mark_flag_as_required("workdir")


def init_distributed() -> None:
  """jax.distributed.initialize(); cluster environments (TPU pods, SLURM) are detected by JAX.
  Elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
  (launch/local_multiprocess.sh does). CPU processes talk through gloo."""
  import jax
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kw = {}
  if "JAX_NUM_PROCESSES" in os.environ:
    kw = dict(num_processes=int(os.environ["JAX_NUM_PROCESSES"]), process_id=int(os.environ["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kw)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save step at INFO
  logging.getLogger("ecg_contrastive").setLevel(logging.INFO)
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
  if FLAGS.distributed:
    init_distributed()
  if FLAGS.mode == "export":
    from ecg_contrastive.export.to_torch import export
    out = export(FLAGS.workdir, FLAGS.export_dir or os.path.join(FLAGS.workdir, "torch"), step=FLAGS.step)
    print(f"exported to {out}")
    return
  if FLAGS.config is None:
    raise app.UsageError("--config is required for training, e.g. --config configs/default.py")
  from ecg_contrastive.train import train_and_evaluate
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
