"""An independent ECG simulator, for evaluation only: a McSharry-style (ECGSYN) phase model with a vector per wave.

  python -m ecg_contrastive.evals.independent.simulate --out DIR --records 400 [--seed 0]

writes DIR/<VERSION key>/ (manifest.csv + WFDB records, 500 Hz, 10 s, 12 leads, int16 µV) in the layout of the
`ecg_manifest` builder. It shares no code or parameters with ecg_contrastive/data/synthetic (a cardiac dipole
driven by wave templates, used for training); only the vocabulary and the report writer (report_ja) are common.

The model. Each beat k is one turn of a limit cycle: the phase θ runs from the beat's R peak round to the next in
RR_k seconds. A wave event i (P, Q, R, S, T-, T+, and for some findings R', f- or F-waves) is a Gaussian in
phase, a_i exp(-Δθ²/2b_i²), which is the closed form of ECGSYN's z-equation for one turn; phases are placed by
physiological times (PR, QRS, QT by Bazett), so θ_i = 2π t_i / RR_k. Unlike ECGSYN's scalar z, each event carries a
3-D direction (its vectorcardiogram loop is the sum of the event vectors), projected on the frontal (Einthoven) and
horizontal (precordial) lead vectors, the precordial ones perturbed per record (electrode placement, torso). RR
intervals come from a bimodal spectrum (Mayer wave ~0.1 Hz, respiratory 0.15-0.4 Hz) as in ECGSYN, or from the
rhythm's own process (AF: irregular; flutter: multiples of the flutter cycle; ectopic beats early). Every record
then gets, unlabelled as in real recordings, baseline wander (< 0.5 Hz), 50 or 60 Hz mains and EMG, added per
electrode, so III = II - I holds for the noise as for the heart.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time

import numpy as np

from ecg_contrastive.ecg import signal
from ecg_contrastive.vocab import report_ja

VERSION = 1  # change whenever a record changes: the folder's cache key
FS = signal.SAMPLE_RATE
N = signal.NUM_SAMPLES
FINDINGS = (
  "正常心電図",
  "洞性頻脈",
  "洞性徐脈",
  "心房細動",
  "心房粗動",
  "心房期外収縮",
  "心室期外収縮",
  "1度房室ブロック",
  "完全右脚ブロック",
  "完全左脚ブロック",
  "左軸偏位",
  "右軸偏位",
  "低電位",
  "左室肥大",
)
RHYTHMS = {"洞性頻脈", "洞性徐脈", "心房細動", "心房粗動"}
# Frontal QRS axis (degrees) drawn per finding; normal otherwise.
AXIS = {"左軸偏位": (-75.0, -35.0), "右軸偏位": (105.0, 160.0), "左室肥大": (-10.0, 45.0)}
NORMAL_AXIS = (-10.0, 75.0)  # of the R event; the net QRS axis lands in -30..+90
# Precordial electrode directions in the horizontal plane (degrees from the left, toward anterior).
PRECORDIAL_DEG = (118.0, 96.0, 78.0, 60.0, 32.0, 5.0)
PRECORDIAL_GAIN = 1.3  # the chest electrodes are nearer the heart than the limb leads


def _unit(v) -> np.ndarray:
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v)


def _frontal(deg: float, z: float) -> np.ndarray:
  """Unit vector at frontal angle `deg` (x leftward, y inferior) with anterior component `z` before normalising."""
  a = np.deg2rad(deg)
  return _unit([np.cos(a), np.sin(a), z])


def rr_series(rng: np.random.Generator, hr: float, cv: float, n: int = 64) -> np.ndarray:
  """n RR intervals (s) around 60/hr with a bimodal spectrum (Mayer 0.1 Hz + respiratory), std cv * mean."""
  f = np.fft.rfftfreq(256, d=1.0)  # a 1 Hz tachogram, as ECGSYN
  resp = rng.uniform(0.15, 0.4)
  lf_hf = rng.uniform(0.5, 2.0)
  power = lf_hf * np.exp(-((f - 0.1) ** 2) / (2 * 0.01**2)) + np.exp(
    -((f - resp) ** 2) / (2 * 0.02**2)
  )
  spectrum = np.sqrt(power) * np.exp(2j * np.pi * rng.random(len(f)))
  x = np.fft.irfft(spectrum, 256)[:n]
  x = (x - x.mean()) / (x.std() + 1e-12)
  return 60.0 / hr * (1.0 + cv * x)


class Record:
  """Wave events of one record: times (s), widths (s), amplitudes (mV) and 3-D directions, plus continuous
  atrial activity (AF f-waves, flutter F-waves) as a (N, 3) vector signal."""

  def __init__(self):
    self.t, self.w, self.a, self.d = [], [], [], []
    self.atrial = np.zeros((N, 3))

  def add(self, t: float, w: float, a: float, d: np.ndarray) -> None:
    self.t.append(t)
    self.w.append(w)
    self.a.append(a)
    self.d.append(d)

  def vcg(self) -> np.ndarray:
    """(N, 3) heart vector in mV: the Gaussian events summed (vectorised over events and samples)."""
    t = np.arange(N) / FS
    tc, w, a, d = (np.asarray(x) for x in (self.t, self.w, self.a, self.d))
    keep = (tc > -0.5) & (tc < N / FS + 0.5)
    tc, w, a, d = tc[keep], w[keep], a[keep], d[keep]
    g = np.exp(-0.5 * ((t[:, None] - tc[None, :]) / w[None, :]) ** 2) * a[None, :]
    return g @ d + self.atrial


class Heart:
  """Per-record morphology: event vectors and intervals for a finding."""

  def __init__(self, rng: np.random.Generator, finding: str):
    self.rng, self.finding = rng, finding
    lo, hi = AXIS.get(finding, NORMAL_AXIS)
    self.axis = rng.uniform(lo, hi)
    scale = {"低電位": rng.uniform(0.22, 0.32), "左室肥大": rng.uniform(2.6, 3.1)}.get(
      finding, rng.uniform(0.8, 1.3)
    )
    self.r_amp = 1.3 * scale
    back = rng.uniform(-0.35, -0.15) if finding == "左室肥大" else rng.uniform(-0.55, -0.25)
    self.r_dir = _frontal(self.axis, back)  # left ventricle: leftward and posterior
    self.q_dir = _unit([-0.4, rng.uniform(-0.1, 0.3), 0.9])  # septal: rightward, anterior
    self.s_dir = _unit([-0.35, -0.5, -0.75])  # basal: rightward, superior, posterior
    self.p_dir = _frontal(rng.uniform(35.0, 70.0), 0.25)
    self.p_amp = rng.uniform(0.1, 0.2) * (0.5 if finding == "低電位" else 1.0)
    self.t_dir = _unit(0.6 * self.r_dir + 0.4 * _frontal(rng.uniform(20.0, 60.0), 0.6))
    self.t_amp = rng.uniform(0.2, 0.35) * min(scale, 1.6)
    if finding == "左室肥大":  # strain: the T vector turned away from the dominant QRS
      self.t_dir = _unit(-self.r_dir + [0.0, 0.0, 0.3])
      self.t_amp = rng.uniform(0.2, 0.35)
    if finding == "完全左脚ブロック":
      self.t_dir = _unit(-self.r_dir)
    self.pr = rng.uniform(0.22, 0.34) if finding == "1度房室ブロック" else rng.uniform(0.12, 0.19)
    self.qrs_scale = rng.uniform(0.9, 1.1)

  def sinus_p(self, rec: Record, r_time: float, p_dir=None) -> None:
    """A P wave whose onset is PR before the QRS onset (QRS onset 45 ms before the R peak)."""
    width = 0.022
    rec.add(
      r_time - 0.045 - self.pr + 2.2 * width,
      width,
      self.p_amp,
      self.p_dir if p_dir is None else p_dir,
    )

  def qrs(self, rec: Record, r: float, rr: float) -> None:
    """QRS and T of a supraventricular beat with its R peak at r (s); rr: the preceding interval."""
    k, f = self.qrs_scale, self.finding
    if (
      f == "完全左脚ブロック"
    ):  # no septal q; slow, notched leftward-posterior activation; no S in I, V6
      d = _unit(self.r_dir + [0.0, 0.0, -0.4])
      rec.add(r - 0.025, 0.02 * k, 0.9 * self.r_amp, d)
      rec.add(r + 0.035, 0.022 * k, 1.0 * self.r_amp, d)
    else:
      rec.add(r - 0.025, 0.009 * k, 0.12 * self.r_amp, self.q_dir)
      rec.add(r, 0.011 * k, self.r_amp, self.r_dir)
      rec.add(r + 0.026, 0.01 * k, 0.3 * self.r_amp, self.s_dir)
      if (
        f == "完全右脚ブロック"
      ):  # late slow rightward-anterior terminal forces: R' in V1, wide S in I, V6
        rec.add(
          r + 0.075,
          0.025 * k,
          self.rng.uniform(0.7, 1.0) * max(self.r_amp, 1.0),
          _unit([-0.65, 0.05, 0.75]),
        )
    qt = 0.40 * np.sqrt(np.clip(rr, 0.3, 2.0)) * self.rng.uniform(0.95, 1.05)
    t_peak = r - 0.045 + qt - 0.09
    t_dir = self.t_dir
    if f == "完全右脚ブロック":
      t_dir = _unit(self.t_dir + [0.3, 0.0, -0.6])
    rec.add(t_peak - 0.03, 0.05, 0.6 * self.t_amp, t_dir)  # T- and T+ as in ECGSYN (asymmetric T)
    rec.add(t_peak + 0.01, 0.035, 0.6 * self.t_amp, t_dir)
    if f == "左室肥大":
      rec.add(r + 0.1, 0.04, 0.12, -self.r_dir)  # ST depression in the leads of the tall R

  def pvc(self, rec: Record, r: float) -> None:
    """A ventricular premature beat: no P, a wide QRS of another axis, a large discordant T."""
    rng = self.rng
    d = _frontal(self.axis + rng.choice([-1, 1]) * rng.uniform(100, 160), rng.uniform(-0.8, 0.8))
    amp = rng.uniform(1.4, 2.2)
    rec.add(r - 0.02, 0.03, 0.7 * amp, d)
    rec.add(r + 0.03, 0.03, 0.6 * amp, d)
    rec.add(r + 0.3, 0.06, 0.45 * amp * rng.uniform(0.3, 0.5), -d)


def _beats(rng: np.random.Generator, finding: str, heart: Heart, rec: Record) -> dict:
  """Places the beats of the record's rhythm; returns the record's measured parameters."""
  if finding == "洞性頻脈":
    hr, cv = rng.uniform(102, 145), rng.uniform(0.005, 0.02)
  elif finding == "洞性徐脈":
    hr, cv = rng.uniform(38, 56), rng.uniform(0.01, 0.05)
  else:
    hr, cv = rng.uniform(62, 98), rng.uniform(0.01, 0.05)
  start = -rng.uniform(0.0, 60.0 / hr)
  info = {"hr": hr, "pr_s": heart.pr, "axis_deg": heart.axis}
  if finding == "心房細動":
    hr = rng.uniform(65, 130)
    rr = rng.gamma(shape=12.0, scale=60.0 / hr / 12.0, size=60).clip(0.3, 2.0)
    rr *= 1.0 + rng.uniform(0.15, 0.3) * rng.standard_normal(60)  # CV well above sinus
    rr = np.abs(rr).clip(0.3, 2.0)
    r_times = start + np.concatenate([[0], np.cumsum(rr)])
    t = np.arange(N) / FS
    f_dir = _unit([-0.2, 0.6, 0.8])
    fw = sum(
      rng.uniform(0.02, 0.06)
      * np.sin(2 * np.pi * rng.uniform(4.5, 7.5) * t + rng.uniform(0, 2 * np.pi))
      * (1 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t))
      for _ in range(3)
    )
    rec.atrial += fw[:, None] * f_dir[None, :]
    for i, r in enumerate(r_times[:-1]):
      heart.qrs(rec, r, rr[i - 1] if i else rr[0])
    info.update(hr=60.0 / rr.mean())
    return info
  if finding == "心房粗動":
    cycle = 60.0 / rng.uniform(250, 340)
    t = np.arange(N) / FS
    phase = ((t - start) / cycle) % 1.0
    saw = (
      np.where(phase < 0.75, 1.0 - phase / 0.75, (phase - 0.75) / 0.25) - 0.5
    )  # slow fall, quick rise
    rec.atrial += rng.uniform(0.2, 0.35) * saw[:, None] * _unit([0.1, -0.85, 0.5])[None, :]
    conduct = rng.choice([2, 4]) if rng.random() < 0.7 else None
    waves, r, prev = 0, start + 0.25, 0.6
    while r < N / FS + 1:
      heart.qrs(rec, r, prev)
      step = conduct or rng.choice([2, 3, 4])
      prev = step * cycle
      r += prev
      waves += step
    info.update(hr=60.0 / (cycle * (conduct or 3)), flutter_cycle_s=cycle)
    return info
  rr = rr_series(rng, hr, cv)
  r, i, r_times = start, 0, []
  while r < N / FS + 1:
    r_times.append((r, rr[i]))
    r += rr[i]
    i += 1
  n_ectopic = 0
  skip_until = -1.0
  for k, (r, interval) in enumerate(r_times):
    if r < skip_until:
      continue
    heart.sinus_p(rec, r)
    heart.qrs(rec, r, interval)
    # ectopic beats between sinus beats 1..n-2 (so each one shows its pause)
    if finding in ("心房期外収縮", "心室期外収縮") and 0.5 < r < 8.0 and rng.random() < 0.3:
      nxt = r_times[k + 1][0] if k + 1 < len(r_times) else r + interval
      coupling = (nxt - r) * rng.uniform(0.55, 0.7 if finding == "心室期外収縮" else 0.8)
      e = r + coupling
      n_ectopic += 1
      if (
        finding == "心室期外収縮"
      ):  # compensatory: the next sinus beat falls when it would have anyway
        heart.pvc(rec, e)
        skip_until = nxt + 1e-6
      else:  # the sinus node is reset: the next beat one cycle after the PAC
        p_dir = _frontal(rng.uniform(-90.0, 20.0), 0.3)
        heart.sinus_p(rec, e, p_dir)
        heart.qrs(rec, e, coupling)
        shift = e + interval - nxt
        r_times[k + 1 :] = [(t + shift, iv) for t, iv in r_times[k + 1 :]]
  if finding in ("心房期外収縮", "心室期外収縮") and n_ectopic == 0:  # at least one, mid-record
    return None
  info["ectopic_beats"] = n_ectopic
  return info


def noise(rng: np.random.Generator) -> np.ndarray:
  """(N, 9) per-electrode interference (RA, LA, LL, V1..V6), mV: wander < 0.5 Hz, mains, EMG."""
  t = np.arange(N) / FS
  out = np.zeros((N, 9))
  mains_hz = rng.choice([50.0, 60.0])
  mains_phase = rng.uniform(0, 2 * np.pi)
  for e in range(9):
    for _ in range(3):
      out[:, e] += rng.uniform(0.03, 0.2) * np.sin(
        2 * np.pi * rng.uniform(0.05, 0.45) * t + rng.uniform(0, 2 * np.pi)
      )
    out[:, e] += rng.uniform(0.01, 0.04) * np.sin(
      2 * np.pi * mains_hz * t + mains_phase + rng.uniform(-1.5, 1.5)
    )
    emg = rng.standard_normal(N) * rng.uniform(0.004, 0.015)
    out[:, e] += emg - np.convolve(
      emg, np.ones(9) / 9, mode="same"
    )  # high-passed: muscle, not drift
  return out


def simulate(
  rng: np.random.Generator, finding: str, interference: bool = True
) -> tuple[np.ndarray, dict]:
  """One record of `finding`: ((N, 12) float mV in signal.LEADS order, its parameters). interference=False
  leaves out wander, mains and EMG (for measuring the heart's waves in tests)."""
  if finding not in FINDINGS:
    raise ValueError(f"finding {finding!r} is not simulated; use one of {FINDINGS}")
  while True:
    heart, rec = Heart(rng, finding), Record()
    info = _beats(rng, finding, heart, rec)
    if info is not None:
      break
  vcg = rec.vcg()
  lead_i, lead_ii = vcg @ _frontal(0.0, 0.0), vcg @ _frontal(60.0, 0.0)
  chest = []
  for deg in PRECORDIAL_DEG:  # electrode placement and torso: direction and gain per record
    a = np.deg2rad(deg + rng.uniform(-10, 10))
    v = _unit([np.cos(a), rng.uniform(-0.1, 0.25), np.sin(a)])
    chest.append(vcg @ v * PRECORDIAL_GAIN * rng.uniform(0.85, 1.15))
  n = noise(rng) if interference else np.zeros((N, 9))
  ra, la, ll, v = n[:, 0], n[:, 1], n[:, 2], n[:, 3:]
  wct = (ra + la + ll) / 3
  eight = np.column_stack(
    [lead_i + la - ra, lead_ii + ll - ra, np.column_stack(chest) + v - wct[:, None]]
  )
  return signal.from_independent(eight), {**info, "finding": finding}


def labels_of(finding: str) -> list[str]:
  """Vocabulary terms of a record of `finding`: its rhythm and the finding, in reading order."""
  return report_ja.ordered([finding] if finding in RHYTHMS else ["洞調律", finding])


def folder_name(seed: int, records: int) -> str:
  return f"v{VERSION}_seed{seed}_n{records}"


def write_folder(root: str, records: int = 400, seed: int = 0) -> str:
  """Writes (once) root/<folder_name>/: manifest.csv, records/*.hea|.dat, params.json; returns that folder.
  A folder whose done.json matches is reused as is."""
  import wfdb

  folder = os.path.join(root, folder_name(seed, records))
  done = os.path.join(folder, "done.json")
  key = {"version": VERSION, "seed": seed, "records": records}
  if os.path.isfile(done) and json.load(open(done)).get("key") == key:
    return folder
  if records < len(FINDINGS):
    raise ValueError(f"--records {records}: give at least {len(FINDINGS)} (one per finding)")
  os.makedirs(os.path.join(folder, "records"), exist_ok=True)
  rng = np.random.default_rng(seed)
  started = time.perf_counter()
  rows, params = [], []
  for i in range(records):
    finding = FINDINGS[i % len(FINDINGS)]
    mv, info = simulate(rng, finding)
    units = signal.to_units(mv, f"independent record {i}")
    name = f"ind{i:05d}"
    wfdb.wrsamp(
      name,
      fs=FS,
      units=["mV"] * signal.NUM_LEADS,
      sig_name=list(signal.LEADS),
      d_signal=units.astype(np.int16),
      fmt=["16"] * signal.NUM_LEADS,
      adc_gain=[float(signal.UNITS_PER_MV)] * signal.NUM_LEADS,
      baseline=[0] * signal.NUM_LEADS,
      write_dir=os.path.join(folder, "records"),
    )
    labels = labels_of(finding)
    if report_ja.primary_label(labels) != finding:
      raise AssertionError(f"{finding}: the primary label of {labels} is not the finding")
    report = report_ja.write_varied(rng, labels, {})
    rows.append(
      {
        "path": f"records/{name}",
        "report": report,
        "patient_id": name,
        "split": "test",
        "labels": ";".join(labels),
        "finding": finding,
      }
    )
    params.append({"record_id": f"records/{name}", **info})
  with open(os.path.join(folder, "manifest.csv"), "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  with open(os.path.join(folder, "params.json"), "w") as f:
    json.dump(params, f, ensure_ascii=False, indent=0)
  seconds = time.perf_counter() - started
  with open(done, "w") as f:
    json.dump({"key": key, "seconds": round(seconds, 1)}, f)
  return folder


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--out", required=True, help="root folder; the records go to OUT/v<version>_seed<s>_n<N>"
  )
  parser.add_argument("--records", type=int, default=400)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  started = time.perf_counter()
  folder = write_folder(args.out, args.records, args.seed)
  print(f"{folder}: {args.records} records ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
  main()
