r"""The paper's setup (arXiv 2504.09302): ResNet1d-18 on (5000, 12) at 500 Hz, 256-d joint space,
symmetric InfoNCE at a fixed tau 0.07, a frozen Japanese (medical) text tower.

  python -m ecg_contrastive.main --config configs/paper.py:synthetic_ecg_ja/large,/models/bert-base-japanese-v3 \
      --workdir runs/paper --config.batch_size=1024

arg = "DATASET,TEXT_MODEL_DIR" (either may be empty: defaults synthetic_ecg_ja/large and the stand-in).

The paper's text tower is MedLlama3-JP-v2, a Llama-3 8B decoder (4 safetensors shards, 16 GB in bfloat16, 15 GB
without the lm_head, which the encoder skips): save it locally and pass its directory as TEXT_MODEL_DIR, computing
in bfloat16 (the weights too):

  python -m ecg_contrastive.main --config configs/paper.py:synthetic_ecg_ja/large,/models/MedLlama3-JP-v2 \
      --workdir runs/paper_llm --config.text.dtype=bfloat16 --config.text.batch_size=64

Its reports are embedded once before training, the weights split over the local devices along heads and MLP
(models/llama.py). XLA's plan per device for one batch of 256 x 128 tokens (bench/text_precompute.py --plan;
BENCHMARKS.md): 1.75 GiB of weights and batch per device on 8 devices (a 16 GB TPU chip holds it with room to
spare; at most 3.1 GiB with activations), 14.0 GiB + at most 6 GiB of activations on one device (an 80 GB GPU).
Pooling: 'mean' here; --config.text.pooling=last with a prompt such as
--config.text.template='この心電図所見「{}」を一語で表すと：' (PromptEOL) is the decoder-style alternative.
Sweep batch sizes with python -m ecg_contrastive.sweep. A batch larger than memory keeps its exact contrastive
gradient with gradient caching, e.g. --config.batch_size=16384 --config.microbatches=8 (2,048 ECGs of
activations at a time); --config.loss.name=sigmoid --config.train.logit_bias=-10.0 trains with SigLIP's loss.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, _, model_dir = (arg or "").partition(",")
  c = default.get_config()
  c.dataset = dataset or "synthetic_ecg_ja/large"
  c.text.model_dir = model_dir
  c.text.standin = dict(hidden_size=768, num_layers=12, num_heads=12, seed=0)
  c.text.pooling = "mean"
  c.text.max_length = 256
  c.model.update(width=64, downsample=1, embed_dim=256)
  c.train.dtype = "bfloat16"
  c.learn_temperature = False
  c.loss.duplicate_reports_positive = False  # plain InfoNCE, as in the paper
  c.loss.tile = 4096  # (4096, 4096) logit tiles: large batches fit (BENCHMARKS.md, tiled loss)
  c.batch_size = 256
  c.eval_batch_size = 1024
  c.num_epochs = 50
  c.optimizer.update(lr=1e-3, weight_decay=1e-2, warmup_steps=500)
  default.plain_training(c)  # every augmentation off, no lead-presence channels: the paper has none
  c.log_every = 50
  c.checkpoint_every = 1000
  c.prefetch = 4
  return c
