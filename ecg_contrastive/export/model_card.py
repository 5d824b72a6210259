"""The export folder's model card (README.md): what the model is, what it was trained on, its input, its
evaluation (the training workdir's eval/results.csv), and its limits. Written by to_torch.export."""

from __future__ import annotations

import csv
import io
from typing import Any

from ecg_contrastive import paths

MODEL_TYPE = (
  "ecg_contrastive_resnet1d"  # config.json's model_type: tools that read the folder find one
)
_COLUMNS = (
  "dataset",
  "split",
  "label_set",
  "step",
  "n",
  "macro_auroc",
  "top1",
  "top5",
  "superset_top1",
)


def read_results(workdir: str) -> list[dict[str, str]]:
  """The rows of WORKDIR/eval/results.csv (training's and --mode eval's evaluations), [] when there is none."""
  path = paths.join(workdir, "eval", "results.csv")
  if not paths.exists(path):
    return []
  return list(csv.DictReader(io.StringIO(paths.read_text(path))))


def _cell(value: str | None) -> str:
  if value in (None, ""):
    return "-"
  try:
    number = float(value)
  except ValueError:
    return value
  return f"{number:.4f}" if not number.is_integer() else f"{int(number)}"


def _evaluation(rows: list[dict[str, str]], step: int) -> str:
  """The latest row per (dataset, split, label set) at the exported step, as a Markdown table."""
  latest: dict[tuple, dict] = {}
  for row in rows:
    if str(row.get("step")) == str(step):
      latest[(row.get("dataset"), row.get("split"), row.get("label_set"))] = row
  if not latest:
    return (
      f"No evaluation of step {step} is recorded in the training workdir's eval/results.csv. Evaluate with\n"
      "`python -m ecg_contrastive.main --mode eval --workdir RUN --config CONFIG` and export again.\n"
    )
  lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
  lines += [
    "| " + " | ".join(_cell(row.get(c)) for c in _COLUMNS) + " |" for row in latest.values()
  ]
  return "\n".join(lines) + "\n"


def _text_model(model_dir: str | None) -> str:
  if model_dir is None:
    return "not recorded"
  return "the stand-in BERT (random weights)" if model_dir == "" else f"`{model_dir}`"


def render(run_config: Any, config: dict, labels: list[dict], results: list[dict[str, str]]) -> str:
  """README.md of an export folder. run_config: the training config (config.json of the workdir); config: the
  export's config.json; labels: labels.json; results: read_results(workdir)."""
  arch, contract, source = config["architecture"], config["input"], config["source"]
  dataset = run_config.get("dataset", None)
  text = run_config.get("text", None)
  text_model = text.get("model_dir", "") if text is not None else None
  standin = text_model == ""
  limits = []
  if dataset is None or text is None:
    limits.append("The training workdir's config.json does not say its dataset or text model.")
  if str(dataset).startswith("synthetic"):
    limits.append(
      f"Trained on `{dataset}`, this project's simulated ECGs with generated Japanese reports: a demonstration "
      "and test model, not for clinical use; its numbers on real recordings will be lower."
    )
  if standin:
    limits.append(
      "The text tower was the stand-in BERT (random weights, character vocabulary), not a medical language "
      "model: report embeddings separate strings, not meanings, so paraphrased prompts are not understood."
    )
  limits.append(
    "Zero-shot scores rank the labels in label_embeddings.safetensors (or a label set of label_sets/); "
    "probabilities are a softmax over that list only. Not a medical device."
  )
  if config.get("ood"):
    limits.append(
      "Each prediction carries an out-of-distribution score (model.ood(ecg), zero_shot's ood_* keys; ood.json): "
      "above the threshold percentile of validation records it warns that the ECG is unlike the training data. "
      "A low score is no proof that an input is a normal 12-lead ECG."
    )
  else:
    limits.append(
      "This folder has no out-of-distribution reference (ood.json): predictions do not say when an ECG is "
      "unlike the training data."
    )
  return f"""---
library_name: ecg_contrastive
tags: [ecg, contrastive, zero-shot, japanese]
---

# ECG encoder (ecg_contrastive), step {source["step"]}

A ResNet1d ECG encoder (depth {arch.get("depth", "?")}, width {arch.get("width", "?")}, embedding
{arch.get("embed_dim", "?")}) trained contrastively against frozen Japanese report embeddings (symmetric InfoNCE,
after arXiv 2504.09302), exported from JAX/Flax to PyTorch. It scores {config["zero_shot"]["num_labels"]}
Japanese ECG findings zero-shot (labels.json; e.g. {", ".join(lab.get("ja", "?") for lab in labels[:3])}).

- Training data: {f"`{dataset}`" if dataset else "not recorded"}; source workdir `{source["workdir"]}`,
  step {source["step"]}.
- Text model (frozen): {_text_model(text_model)}.
- Parity with the Flax model: {"verified, see config.json" if config.get("verified_parity") else "not verified"}.

## Input

`{contract["shape"]}` {contract["dtype"]}, {contract["layout"]}; {contract["sampling_rate_hz"]} Hz,
{contract["duration_s"]} s, leads {", ".join(contract["lead_order"])}, in {contract["units"]}
({contract["scaling"]}).

```python
import modeling_ecg  # this folder's file; needs torch and safetensors
model = modeling_ecg.load(".")
print(model.zero_shot(ecg_mv, k=5))  # ecg_mv: float tensor (B, 12, 5000) in mV
```

## Evaluation

{_evaluation(results, source["step"])}
macro AUROC is over the labels with both positives and negatives in the split (the field's zero-shot number);
top-1 / top-5 over records with one primary finding.

## Limitations

{chr(10).join("- " + item for item in limits)}
"""
