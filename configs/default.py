r"""The built-in demo: synthetic Japanese ECG-report data + the stand-in text tower, sized for a 2-core CPU.

  python -m ecg_contrastive.main --config configs/default.py --workdir runs/demo
  python -m ecg_contrastive.main --config configs/default.py:tiny --workdir /tmp/tiny   # a 1-minute smoke run

Same method as the paper (ResNet1d-18, symmetric InfoNCE at tau 0.07, frozen text
embeddings, zero-shot over 98 labels), at CPU size: width 16 instead of 64 and the
500 Hz input average-pooled to 100 Hz inside the model (the input contract stays
(5000, 12) int16 microvolts, so export and prediction are unchanged).
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "synthetic_ecg_ja/demo"
  c.data_dir = ""  # "" -> $ECG_CONTRASTIVE_DATA or ~/.cache/ecg_contrastive/tfds
  c.source_dir = (
    ""  # folder of the raw records for ptbxl / mimic_iv_ecg / ecg_manifest (docs/data.md)
  )
  # How a host reads the splits (docs/data.md): host_read "cache" = a full int16 copy of each split per host,
  # memory-mapped; "stream" = each process reads its rows of every batch from the shards, reader_threads threads;
  # host_cache "share" (with "stream") keeps the records this host read in a local file.
  c.data = ml_collections.ConfigDict()
  c.data.host_read = "cache"
  c.data.reader_threads = 4
  c.data.host_cache = "none"
  # placement: where the training split's waveforms live while training (docs/data.md, "Placement"):
  # "host" (read by the host each batch), "device" (resident on the mesh, batches gathered there) or "auto"
  # (device when it fits in device_memory_share of each device's memory); the same batches either way
  c.data.placement = "auto"
  c.data.device_memory_share = 0.3
  # device_memory_bytes: per device, e.g. 16e9 (0: the backend's bytes_limit; CPUs report none);
  # expected_ecg_per_s: the global rate the log plans input bandwidth for (0: the measured one)
  c.data.device_memory_bytes = 0.0
  c.data.expected_ecg_per_s = 0.0
  c.train_split = "train"
  c.eval_splits = ("validation", "test")

  c.text = ml_collections.ConfigDict()
  # "" -> the stand-in BERT (random weights, character vocabulary), written on first use; else a local Hugging
  # Face directory of a BERT/RoBERTa encoder or a Llama/Mistral/Qwen2 decoder (single or sharded safetensors)
  c.text.model_dir = ""
  c.text.standin = dict(hidden_size=128, num_layers=2, num_heads=4, seed=0)
  c.text.pooling = "mean"  # "mean" | "last" (decoders) | "cls" | "pooler" (BERT)
  # "" or a prompt with '{}' wrapped around each report and label prompt, e.g. "所見「{}」"
  c.text.template = ""
  # hidden states to pool: transformers' hidden_states index (Llama family); -1 the last
  c.text.layer = -1
  c.text.max_length = 128
  c.text.batch_size = 256
  # compute dtype (and a Llama-family model's weights): "float32" | "bfloat16"
  c.text.dtype = "float32"
  c.text.cache_dir = ""  # "" -> $ECG_CONTRASTIVE_CACHE or ~/.cache/ecg_contrastive/text
  c.text.templates = ("{}", "{}を認める。", "所見：{}。")

  # the architecture: all that an export rebuilds; lead_mask: the tower also sees which leads are all zero
  # (12 presence channels beside the leads; pair it with config.augment.lead_dropout). On in the demo, with the
  # augmentation below (README, "Robustness": better on every split, the independent check and fewer leads)
  c.model = dict(depth=18, width=16, downsample=5, embed_dim=128, lead_mask=True)
  c.train = dict(
    temperature=0.07,
    dtype="float32",  # initial (fixed unless learn_temperature) tau; compute dtype
    logit_bias=config_dict.placeholder(float),  # the sigmoid loss's initial bias (SigLIP: -10.0)
    bn_backward="lean",
    conv_impl="xla",  # the blocks' conv + BatchNorm: "xla" | "shifted_matmul" | "pallas" (fused passes, same math)
  )  # BatchNorm's backward: "lean" (keeps bf16 inputs only) | "autodiff" (as flax's)
  c.learn_temperature = False
  c.text_head_trainable = True
  c.loss = dict(
    name="softmax", duplicate_reports_positive=True, tile=0, ring=False
  )  # name: "softmax" (InfoNCE) | "sigmoid" (SigLIP); tile T > 0: (T, T) logit tiles, same results in
  # O(B x E + T x T) memory per device (0: dense (b, B) blocks); ring: columns travel by ppermute (O(B/n x E))

  # Training-time augmentation on the device (ecg_contrastive/ecg/augment.py), each drawn per record with
  # probability p; never at evaluation. On in the demo (measured: README, "Robustness"); off in configs/paper.py
  # (the paper has none) and in the tiny variant (tests set what they test): plain_training(c)
  c.augment = ml_collections.ConfigDict()
  c.augment.shift = dict(p=0.5, max_s=0.5)  # time shift, zero fill, |s| <= max_s seconds
  c.augment.gain = dict(p=0.5, low=0.7, high=1.4)  # whole record x factor, log-uniform
  c.augment.lead_gain = dict(p=0.5, low=0.85, high=1.15)  # each lead x its own factor
  c.augment.wander = dict(p=0.5, mv=0.5, max_hz=0.5, components=3)  # baseline wander < max_hz
  c.augment.mains = dict(p=0.3, mv=0.05)  # 50 or 60 Hz sinusoid of amplitude mv
  c.augment.noise = dict(p=0.3, mv=0.02)  # white Gaussian noise, standard deviation mv
  c.augment.lead_dropout = dict(p=0.3, lead_p=0.5)  # each lead zeroed with lead_p, one kept

  c.batch_size = 256
  c.microbatches = (
    1  # k > 1: exact gradient of the batch's loss with activations of batch_size / k ECGs at a time
  )
  c.eval_batch_size = 512
  c.num_epochs = 12
  c.num_steps = 0  # > 0 overrides num_epochs
  c.optimizer = dict(
    lr=2e-3,
    b1=0.9,
    b2=0.999,
    weight_decay=1e-4,
    warmup_steps=100,
    final_lr_fraction=0.01,
    grad_clip_norm=0.0,
  )
  c.prefetch = 2

  c.log_every = 20
  c.eval_every = 0  # 0 -> evaluate at the end only
  c.eval = ml_collections.ConfigDict()
  # zero-shot label set(s): "terms98" (the 98 terms), "ptbxl_superclass", "ptbxl_rhythm", "ptbxl_form", or a
  # TSV file (evals/label_sets.py); several separated by commas
  c.eval.label_set = "terms98"
  # "" or a metric of the first eval split (config_check.BEST_METRICS): its best checkpoint is kept in
  # WORKDIR/best/ beside the newest keep_checkpoints ones
  c.eval.best_metric = ""
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  # ood: the out-of-distribution reference written at the end of training (ecg_contrastive/evals/ood.py): the
  # pooled features of bank_size training records (0: none) fit a mean and covariance, calibration_size records
  # of `split` calibrate the percentiles; the predictor warns above `percentile`
  c.ood = dict(bank_size=4096, calibration_size=4096, percentile=99.0, split="validation")

  if arg == "tiny":  # seconds per step on any CPU: tests and smoke runs
    plain_training(c)
    c.dataset = "synthetic_ecg_ja/tiny"
    c.model.update(width=8, downsample=10, embed_dim=32)
    c.text.standin = dict(hidden_size=32, num_layers=1, num_heads=2, seed=0)
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_epochs = 0
    c.num_steps = 20
    c.optimizer.warmup_steps = 5
    c.log_every = 5
    c.checkpoint_every = 10
  elif arg:
    raise ValueError(f"configs/default.py: unknown variant {arg!r}; use '' or 'tiny'")
  return c


def plain_training(c: ml_collections.ConfigDict) -> None:
  """Every augmentation off and no lead-presence channels: training as the paper describes it."""
  for name in c.augment:
    c.augment[name].p = 0.0
  c.model.lead_mask = False
