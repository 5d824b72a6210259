"""Synthetic 12-lead ECGs with Japanese reports: the generator behind the `synthetic_ecg_ja` dataset.

    records = synth.generate(100, seed=0)        # Records: ecg int16 (100, 5000, 12), reports, labels...

A chunk of records is built in vectorised passes: findings -> morphology and rhythm plan
(phenotype) -> voltage calibration -> beat schedules -> all wave events rendered at once as a
cardiac dipole -> projection on the leads -> noise -> int16 microvolts -> reports.
Deterministic: a split's records depend only on (seed, split, number of records).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import numpy as np

from ecg_contrastive.data.synthetic import dipole, findings, morphology, noise, phenotype, plan
from ecg_contrastive.data.synthetic import rhythm as rh
from ecg_contrastive.ecg.signal import LEADS, NUM_SAMPLES, SAMPLE_RATE, from_independent, to_units
from ecg_contrastive.vocab import report_ja

SPLITS = ("train", "validation", "test")
RECORDS_PER_PATIENT_P = (0.5, 0.3, 0.2)  # P(1, 2, 3 records of one patient)
CHUNK = 256  # records per random stream and plan (part of the dataset definition: changing it changes data)
BLOCK = (
  32  # records rendered at once: keeps every temporary buffer small (no fresh pages per chunk)
)
_MS = 1000.0 / SAMPLE_RATE  # ms per sample


@dataclasses.dataclass
class Records:
  """n generated records. ecg: int16 (n, 5000, 12) microvolts, leads in signal.LEADS order."""

  ecg: np.ndarray
  report: list[str]
  labels: list[list[str]]
  primary_label: list[str]
  record_id: list[str]
  patient_id: list[str]
  beats: list[
    rh.Beats
  ]  # the schedule behind each record (QRS / P onsets, ms): ground truth for tests


@functools.lru_cache(maxsize=8)
def _patients(
  seed: int, split: str, n_records: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
  """(patient of each record (n,), patient traits, patient primary labels) for one split."""
  rng = np.random.default_rng([seed, SPLITS.index(split), 0])
  per_patient = rng.choice([1, 2, 3], size=n_records, p=RECORDS_PER_PATIENT_P)
  patient_of = np.repeat(np.arange(n_records), per_patient)[:n_records]
  n_patients = int(patient_of[-1]) + 1 if n_records else 0
  return (
    patient_of,
    morphology.draw_patients(rng, n_patients),
    findings.draw_primaries(rng, n_patients),
  )


def num_chunks(n_records: int) -> int:
  return -(-n_records // CHUNK)


def generate_chunk(
  seed: int, split: str, n_records: int, chunk: int, *, noisy: bool = True
) -> Records:
  """Chunk `chunk` (records chunk*CHUNK ...) of the n_records of `split`; chunks are independent."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
  if not 0 <= chunk < num_chunks(n_records):
    raise ValueError(
      f"chunk {chunk} out of range: {n_records} records make {num_chunks(n_records)} chunks"
    )
  patient_of, traits, primaries = _patients(seed, split, n_records)
  code = SPLITS.index(split)
  rows = np.arange(chunk * CHUNK, min((chunk + 1) * CHUNK, n_records))
  rng = np.random.default_rng([seed, code, 1 + chunk])
  records = _chunk(rng, traits, patient_of[rows], primaries[patient_of[rows]], noisy)
  records.record_id = [f"{split}-{i:07d}" for i in rows]
  records.patient_id = [f"P{code}{p:06d}" for p in patient_of[rows]]
  return records


def generate_split(
  seed: int, split: str, n_records: int, *, noisy: bool = True
) -> Iterator[Records]:
  """The n_records of `split`, chunk by chunk; patients never cross splits."""
  for chunk in range(num_chunks(n_records)):
    yield generate_chunk(seed, split, n_records, chunk, noisy=noisy)


def generate(n_records: int, seed: int = 0, split: str = "train", *, noisy: bool = True) -> Records:
  """n_records of one split as a single Records."""
  parts = list(generate_split(seed, split, n_records, noisy=noisy))
  return Records(
    ecg=np.concatenate([p.ecg for p in parts]),
    **{
      f.name: sum((getattr(p, f.name) for p in parts), [])
      for f in dataclasses.fields(Records)
      if f.name != "ecg"
    },
  )


def _chunk(
  rng: np.random.Generator,
  traits: dict[str, np.ndarray],
  patient_of: np.ndarray,
  primaries: np.ndarray,
  noisy: bool,
) -> Records:
  n = len(patient_of)
  labels = findings.draw_labels(rng, primaries)
  heart = morphology.normal_hearts(rng, traits, patient_of)
  rate = np.clip(traits["hr"][patient_of] + rng.normal(0, 4, n), 50, 99)
  chunk = plan.Plan(
    heart, rh.Rhythm.sinus(rate, traits["pr"][patient_of] + rng.normal(0, 6, n)), labels, rng
  )
  phenotype.apply_findings(rng, chunk)
  r = chunk.rhythm
  morphology.rotate_torso(  # the patient's heart in its torso, a little different each day
    heart,
    traits["tilt"][patient_of] + rng.normal(0, 2, n),
    traits["turn"][patient_of] + rng.normal(0, 2, n),
  )
  # Sinus arrhythmia (up to +-7% of the RR with respiration); steady where ectopy is measured against it.
  r.arrhythmia = np.where(r.pac + r.pvc > 0, 0.03, rng.uniform(0.01, 0.07, n))
  ventricular = (
    (r.kind == rh.VT) | (r.kind == rh.PACED_RHYTHM) | ((r.kind == rh.CAVB) & r.escape_wide)
  )
  morphology.calibrate_voltage(rng, heart, ventricular)
  beats = [rh.schedule(rng, r, i) for i in range(n)]
  events = _events(rng, heart, r, beats)
  gains = morphology.gains(heart)
  pools = noise.make_pools(rng)
  ecg = np.empty((n, NUM_SAMPLES, len(LEADS)), np.int16)
  for start in range(0, n, BLOCK):
    block = np.arange(start, min(start + BLOCK, n))
    sel = (events[0] >= block[0]) & (events[0] <= block[-1])
    rec, *rest = (e[sel] for e in events)
    leads = dipole.render(
      len(block),
      NUM_SAMPLES,
      rec - start,
      *rest,
      heart.vector[block],
      gains[block],
      heart.rotation[block],
      heart.chest_leads[block],
    )
    _add_atrial_activity(
      rng,
      leads,
      heart.atrial[block],
      gains[block],
      heart.rotation[block],
      heart.chest_leads[block],
      [beats[i] for i in block],
    )
    if noisy:
      noise.add_noise(
        rng,
        leads,
        pools,
        chunk.wander[block],
        chunk.emg[block],
        chunk.mains[block],
        chunk.mains_hz[block],
        chunk.breath[block],
      )
    swapped = heart.arms_swapped[block]  # LA/RA exchanged: I -> -I, II -> III
    leads[swapped, :, 0], leads[swapped, :, 1] = (
      -leads[swapped, :, 0],
      leads[swapped, :, 1] - leads[swapped, :, 0],
    )
    ecg[block] = to_units(from_independent(leads), "synthetic ECG")
  text = [report_ja.write_varied(rng, labels[i], chunk.where[i]) for i in range(n)]
  primary = [report_ja.primary_label(l) for l in labels]
  if primary != list(primaries):
    raise RuntimeError(
      "findings.draw_labels gave a record a finding that outranks its primary label"
    )
  return Records(ecg, text, labels, primary, [], [], beats)


def _events(rng: np.random.Generator, heart: morphology.Heart, r: rh.Rhythm, beats: list[rh.Beats]):
  """All wave events of a chunk -> (record, wave, centre, sigma in samples, amplitude) for dipole.render."""
  n = len(beats)
  breath = rng.uniform(3000, 5000, n)
  phase = rng.uniform(0, 2 * np.pi, n)
  nominal = np.where(
    r.kind == rh.CAVB, r.escape_rate, r.rate
  )  # ventricular rate before the first beat
  streams = []
  for times, kinds, table in (
    ("atrial_t", "atrial_kind", dipole.ATRIAL_WAVES),
    ("vent_t", "vent_kind", dipole.VENTRICULAR_WAVES),
  ):
    rec = np.concatenate([np.full(len(getattr(b, times)), i) for i, b in enumerate(beats)]).astype(
      int
    )
    t = np.concatenate([getattr(b, times) for b in beats])
    kind = np.concatenate([getattr(b, kinds) for b in beats]).astype(int)
    rr = np.concatenate(
      [
        rh.preceding_rr(b.vent_t, nominal[i]) if times == "vent_t" else np.zeros(len(b.atrial_t))
        for i, b in enumerate(beats)
      ]
    )
    qt = (
      heart.qtc[rec]
      * np.sqrt(np.clip(rr, 300, 2000) / 1000.0)
      * np.where(kind == dipole.CONDUCTED, 1.0, 1.1)
    )
    for k, waves in table.items():
      sel = np.flatnonzero(kind == k)
      e_rec, wave = np.repeat(rec[sel], len(waves)), np.tile(waves, len(sel))
      e_t, e_qt = np.repeat(t[sel], len(waves)), np.repeat(qt[sel], len(waves))
      scale = np.where(dipole.QT_SCALED[wave], e_qt, 1.0)
      amp = 1 + 0.05 * np.sin(2 * np.pi * e_t / breath[e_rec] + phase[e_rec])
      streams.append(
        (
          e_rec,
          wave,
          (e_t + heart.offset[e_rec, wave] * scale) / _MS,
          heart.sigma[e_rec, wave] * scale / _MS,
          amp * (np.abs(heart.vector[e_rec, wave]).max(axis=1) > 0),
        )
      )
  return tuple(np.concatenate(x) for x in zip(*streams))


def _add_atrial_activity(
  rng: np.random.Generator,
  leads: np.ndarray,
  atrial: np.ndarray,
  gains: np.ndarray,
  rotation: np.ndarray,
  chest: np.ndarray,
  beats: list[rh.Beats],
) -> None:
  """Adds fibrillatory f waves (AF) or sawtooth F waves (flutter) along `atrial` (n, 3) mV to leads (n, T, 8)."""
  t = np.arange(NUM_SAMPLES) * _MS
  for i in np.flatnonzero(np.abs(atrial).max(axis=1) > 0):
    if beats[i].flutter is not None:
      period, start = beats[i].flutter
      x = ((t - start) / period) % 1.0
      wave = np.where(x < 0.8, 1 - 2 * x / 0.8, -1 + 2 * (x - 0.8) / 0.2)
      wave = np.convolve(wave, np.ones(7) / 7, mode="same")
    else:  # 3 detuned components around 4-8 Hz, slowly modulated: irregular f waves
      f = rng.uniform(4.5, 7.5) * rng.uniform(0.85, 1.15, 3)
      wave = sum(np.sin(2 * np.pi * fk * t / 1000 + rng.uniform(0, 2 * np.pi)) for fk in f) / 1.7
      wave *= 1 + 0.4 * np.sin(2 * np.pi * t / rng.uniform(1500, 3000))
    leads[i] += (
      wave[:, None]
      * dipole.lead_matrix(
        atrial[i][None, None], gains[i][None], rotation[i : i + 1], chest[i : i + 1]
      )[0]
    ).astype(np.float32)
