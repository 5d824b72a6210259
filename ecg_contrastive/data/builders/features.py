"""The features every ECG-report dataset has, so that the cache and the trainer read any of them alike."""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from ecg_contrastive.ecg.signal import LEADS, MV_PER_UNIT, NUM_SAMPLES, SAMPLE_RATE

CONTRACT = (
  f"12-lead ECGs ({SAMPLE_RATE} Hz, {NUM_SAMPLES // SAMPLE_RATE} s, leads {', '.join(LEADS)}; int16, "
  f"1 unit = {MV_PER_UNIT} mV)"
)


def ecg_report_features(*extra_text: str) -> tfds.features.FeaturesDict:
  """ecg int16 (5000, 12) stored as raw bytes (4x faster reads than the default), report, labels (sequence),
  primary_label, record_id, patient_id (text), plus one text feature per name in `extra_text`."""
  text = tfds.features.Text
  return tfds.features.FeaturesDict(
    {
      "ecg": tfds.features.Tensor(
        shape=(NUM_SAMPLES, len(LEADS)), dtype=np.int16, encoding=tfds.features.Encoding.BYTES
      ),
      "report": text(),
      "labels": tfds.features.Sequence(text()),
      "primary_label": text(),
      "record_id": text(),
      "patient_id": text(),
      **{name: text() for name in extra_text},
    }
  )
