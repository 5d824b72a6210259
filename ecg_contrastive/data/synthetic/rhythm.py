"""Beat schedules: when atria and ventricles fire in each record, for every rhythm the generator knows.

Times are ms from the start of the 10 s record; beats are scheduled over [T_START, T_END] so a
record starts and ends mid-rhythm. A schedule is a handful of events per record (~12 beats), so
it is built per record; all per-sample work happens later, vectorised over the whole chunk.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ecg_contrastive.data.synthetic.dipole import (
  CONDUCTED,
  ECTOPIC_P,
  ECTOPIC_V,
  ECTOPIC_V2,
  PACED,
  SINUS_P,
)

T_START, T_END = -1500.0, 10800.0
SINUS, AF, FLUTTER, JUNCTIONAL, SVT, VT, PACED_RHYTHM, CAVB, WENCKEBACH = range(9)


@dataclasses.dataclass
class Rhythm:
  """Rhythm parameters of n records (all arrays (n,))."""

  kind: np.ndarray  # SINUS, AF, ...
  rate: np.ndarray  # bpm: sinus / atrial rate; ventricular rate for AF, JUNCTIONAL, SVT, VT
  pr: np.ndarray  # ms, P onset to QRS onset (first beat of a Wenckebach group)
  pac: np.ndarray  # number of atrial premature beats
  pvc: np.ndarray  # number of ventricular premature beats
  escape_rate: np.ndarray  # bpm, CAVB escape rhythm
  escape_wide: np.ndarray  # bool, CAVB escape is ventricular (wide)
  flutter_rate: np.ndarray  # per minute
  flutter_ratio: np.ndarray  # 2, 4 or 0 (variable) F waves per QRS
  group: np.ndarray  # Wenckebach group size (P waves per dropped beat)
  arrhythmia: np.ndarray  # sinus: respiratory RR modulation, +- fraction of the RR
  multifocal: np.ndarray  # bool: premature ventricular beats from two foci

  @classmethod
  def sinus(cls, rate: np.ndarray, pr: np.ndarray) -> Rhythm:
    n = len(rate)
    z = np.zeros(n, int)
    return cls(
      kind=z.copy(),
      rate=rate.astype(float),
      pr=pr.astype(float),
      pac=z.copy(),
      pvc=z.copy(),
      escape_rate=np.full(n, 40.0),
      escape_wide=np.zeros(n, bool),
      flutter_rate=np.full(n, 300.0),
      flutter_ratio=np.full(n, 2),
      group=np.full(n, 4),
      arrhythmia=np.full(n, 0.03),
      multifocal=np.zeros(n, bool),
    )


@dataclasses.dataclass
class Beats:
  """One record's schedule. Atrial events fire P waves, ventricular events fire QRS-T complexes."""

  atrial_t: np.ndarray  # (A,) ms, P onset
  atrial_kind: np.ndarray  # (A,) SINUS_P | ECTOPIC_P
  vent_t: np.ndarray  # (V,) ms, QRS onset
  vent_kind: np.ndarray  # (V,) CONDUCTED | ECTOPIC_V | PACED | ECTOPIC_V2
  flutter: tuple[float, float] | None = (
    None  # (period ms, time of one F-wave nadir) for atrial flutter
  )


def _regular(rng: np.random.Generator, rate: float, variability: float) -> np.ndarray:
  """Beat times at `rate` bpm with respiratory modulation (+-variability) and 0.5% jitter."""
  rr = 60000.0 / rate
  n = int((T_END - T_START) / (rr * (1 - variability) * 0.99)) + 2
  approx = np.arange(n) * rr
  breath = rng.uniform(3000, 5000)
  intervals = rr * (
    1 + variability * np.sin(2 * np.pi * approx / breath + rng.uniform(0, 2 * np.pi))
  )
  intervals *= 1 + rng.normal(0, 0.005, n)
  times = T_START + rng.uniform(0, rr) + np.concatenate([[0.0], np.cumsum(intervals[:-1])])
  return times[times < T_END]


def _pick(rng: np.random.Generator, q: np.ndarray, count: int) -> np.ndarray:
  """Up to `count` beat indices inside the record, not first/last and never adjacent (ascending)."""
  if count == 0:
    return np.zeros(0, int)
  candidates = np.flatnonzero((q > 600) & (q < 9300))
  candidates = candidates[(candidates > 0) & (candidates < len(q) - 1)]
  chosen: list[int] = []
  for k in rng.permutation(candidates):
    if len(chosen) < count and all(abs(k - c) > 1 for c in chosen):
      chosen.append(int(k))
  return np.sort(np.array(chosen, int))


def _sinus(rng, r: Rhythm, i: int) -> Beats:
  p = _regular(rng, r.rate[i], r.arrhythmia[i])
  q = p + r.pr[i]
  a_kind = np.full(len(p), SINUS_P)
  for k in _pick(rng, q, int(r.pac[i])):  # premature with an abnormal P; resets the sinus node
    rr = q[k] - q[k - 1]
    p[k:] += q[k - 1] + rng.uniform(0.6, 0.72) * rr - q[k]
    p[k + 1 :] += rr * rng.uniform(0.02, 0.1)
    a_kind[k] = ECTOPIC_P
  q = p + r.pr[i]
  return _with_pvcs(rng, r, i, Beats(p, a_kind, q, np.full(len(q), CONDUCTED)))


def _with_pvcs(rng, r: Rhythm, i: int, beats: Beats) -> Beats:
  """Replaces r.pvc[i] beats by premature wide ones; the atria march on, so the pause compensates.
  Multifocal records take each beat from either focus (at least one from each)."""
  q, kind = beats.vent_t.copy(), beats.vent_kind.copy()
  picked = _pick(rng, q, int(r.pvc[i]))
  focus = np.full(len(picked), ECTOPIC_V)
  if r.multifocal[i] and len(picked) > 1:
    focus[rng.permutation(len(picked))[: rng.integers(1, len(picked))]] = ECTOPIC_V2
  for k, f in zip(picked, focus):
    q[k] = q[k - 1] + rng.uniform(0.48, 0.62) * (q[k] - q[k - 1])
    kind[k] = f
  return dataclasses.replace(beats, vent_t=q, vent_kind=kind)


def _fibrillation(rng, r: Rhythm, i: int) -> Beats:
  """No P waves; irregularly irregular RR (log-normal, CV ~ 0.2)."""
  rr = 60000.0 / r.rate[i]
  n = int((T_END - T_START) / (0.5 * rr)) + 2
  intervals = np.clip(rr * rng.lognormal(-0.02, 0.2, n), 300, 2200)
  q = T_START + rng.uniform(0, rr) + np.concatenate([[0.0], np.cumsum(intervals[:-1])])
  q = q[q < T_END]
  empty = np.zeros(0)
  return _with_pvcs(rng, r, i, Beats(empty, empty.astype(int), q, np.full(len(q), CONDUCTED)))


def _flutter(rng, r: Rhythm, i: int) -> Beats:
  """F waves at the flutter rate; every 2nd / 4th (or a varying 2nd-4th) conducts after a fixed delay."""
  period = 60000.0 / r.flutter_rate[i]
  f = T_START - rng.uniform(0, period) + period * np.arange(int((T_END - T_START) / period) + 2)
  ratio = int(r.flutter_ratio[i])
  steps = np.full(len(f), ratio) if ratio else rng.choice([2, 3, 4], size=len(f), p=[0.5, 0.2, 0.3])
  conducted = np.cumsum(steps) - steps[0] + int(rng.integers(0, 4))
  q = f[conducted[conducted < len(f)]] + rng.uniform(220, 280)
  q = q[q < T_END]
  empty = np.zeros(0)
  return Beats(
    empty, empty.astype(int), q, np.full(len(q), CONDUCTED), flutter=(period, float(f[0]))
  )


def _junctional(rng, r: Rhythm, i: int) -> Beats:
  """Regular narrow QRS; retrograde P just before (short PR) or after the QRS, or hidden (SVT)."""
  q = _regular(rng, r.rate[i], 0.005)
  if r.kind[i] == SVT:
    p = q + rng.uniform(70, 100)
  else:
    p = q - rng.uniform(50, 80) if rng.random() < 0.5 else q + rng.uniform(90, 130)
  return Beats(p, np.full(len(p), ECTOPIC_P), q, np.full(len(q), CONDUCTED))


def _dissociated(rng, r: Rhythm, i: int) -> Beats:
  """Atria and ventricles independent: VT (wide, fast) or complete AV block (slow escape)."""
  p = _regular(rng, r.rate[i] if r.kind[i] == CAVB else rng.uniform(60, 90), 0.02)
  if r.kind[i] == VT:
    q, kind = _regular(rng, r.rate[i], 0.005), ECTOPIC_V
  else:
    q, kind = _regular(rng, r.escape_rate[i], 0.005), (ECTOPIC_V if r.escape_wide[i] else CONDUCTED)
  return Beats(p, np.full(len(p), SINUS_P), q, np.full(len(q), kind))


def _wenckebach(rng, r: Rhythm, i: int) -> Beats:
  """PR lengthens by shrinking steps through each group of P waves until one P is not conducted."""
  p = _regular(rng, r.rate[i], 0.01)
  g = int(r.group[i])
  position = (np.arange(len(p)) + int(rng.integers(0, g))) % g
  pr = r.pr[i] + 2 * rng.uniform(90, 140) * (1 - 0.5**position)
  keep = position < g - 1
  return Beats(p, np.full(len(p), SINUS_P), (p + pr)[keep], np.full(int(keep.sum()), CONDUCTED))


def _paced(rng, r: Rhythm, i: int) -> Beats:
  """Atrial-tracking ventricular pacing: each sinus P is followed by a paced beat after the AV delay."""
  p = _regular(rng, r.rate[i], 0.02)
  return Beats(p, np.full(len(p), SINUS_P), p + r.pr[i], np.full(len(p), PACED))


_SCHEDULES = {
  SINUS: _sinus,
  AF: _fibrillation,
  FLUTTER: _flutter,
  JUNCTIONAL: _junctional,
  SVT: _junctional,
  VT: _dissociated,
  CAVB: _dissociated,
  WENCKEBACH: _wenckebach,
  PACED_RHYTHM: _paced,
}


def schedule(rng: np.random.Generator, rhythm: Rhythm, i: int) -> Beats:
  """The beat schedule of record i."""
  return _SCHEDULES[int(rhythm.kind[i])](rng, rhythm, i)


def preceding_rr(vent_t: np.ndarray, rate: float) -> np.ndarray:
  """(V,) RR interval before each ventricular beat, ms (the first uses the nominal rate)."""
  return np.diff(vent_t, prepend=vent_t[0] - 60000.0 / rate) if len(vent_t) else vent_t
