"""Honest answers on unfamiliar input (ecg/quality.py, the predictor): leads present, flat / clipped / noisy /
implausible leads named, lead aliases mapped where standard, an unknown name a one-line error, missing leads
zero-filled and named."""

import os

import numpy as np
import pytest
import wfdb

from ecg_contrastive.data.synthetic import synth
from ecg_contrastive.ecg import preprocess, quality, signal
from ecg_contrastive.export import predict

NAMES = list(signal.LEADS)


@pytest.fixture(scope="module")
def generated() -> np.ndarray:
  """float (6, 5000, 12) mV: records of the built-in generator (noise included), as training sees them."""
  return signal.to_millivolts(synth.generate(6, seed=3).ecg).astype(np.float64)


def test_generated_records_raise_no_warning(generated):
  for ecg in generated:
    report = quality.check(ecg)
    assert report.warnings() == [] and report.present == NAMES
    assert report.summary() == "leads: 12 of 12 present"


def test_flat_lead_is_named(generated):
  ecg = generated[0].copy()
  ecg[:, [2, 7]] = 0.0  # III and V2 zero-filled, e.g. leads the recorder did not have
  report = quality.check(ecg)
  assert report.flat == ["III", "V2"] and "III" not in report.present
  assert report.summary() == ("leads: 10 of 12 present (I, II, aVR, aVL, aVF, V1, V3, V4, V5, V6)")
  assert report.warnings()[0].startswith("flat lead(s) III, V2 (peak-to-peak under 20 uV)")


def test_clipped_lead_is_named(generated):
  ecg = generated[1].copy()
  v1 = ecg[
    :, 6
  ]  # V1 saturates on the side of its larger deflections (R or S waves): every one cut flat
  if -v1.min() > v1.max():
    ecg[:, 6] = np.maximum(v1, np.quantile(v1, 0.03))
  else:
    ecg[:, 6] = np.minimum(v1, np.quantile(v1, 0.97))
  report = quality.check(ecg)
  assert report.clipped == ["V1"] and report.flat == []
  assert report.warnings() == [
    "clipped lead(s) V1: runs at the lead's extreme value (a saturated amplifier or a clipped recording); "
    "amplitudes there are lost"
  ]
  at_limit = generated[1].copy()
  at_limit[1000:1100, 0] = signal.INT16_LIMIT_MV  # 0.2 s at the int16 limit in lead I
  assert quality.check(at_limit).clipped == ["I"]


def test_noisy_and_implausible_leads_are_named(generated):
  ecg = generated[2].copy()
  ecg[:, 9] += np.random.default_rng(0).normal(0, 0.3, 5000)  # V4: 300 uV of broadband noise
  report = quality.check(ecg)
  assert list(report.noisy) == ["V4"] and report.noisy["V4"] == pytest.approx(0.3, rel=0.15)
  assert report.warnings()[0].startswith("noisy lead(s) V4 (")
  ecg = generated[2].copy()
  ecg[:, 4] *= (
    20 / quality.amplitude(ecg)[4]
  )  # aVL at 20 mV per beat: no heart does that (wrong units)
  report = quality.check(ecg)
  assert list(report.implausible) == ["aVL"] and report.implausible["aVL"] > quality.LARGE_MV
  assert "implausible amplitude in lead(s) aVL (" in "\n".join(report.warnings())


def _wfdb(folder, names, values, rate=500) -> str:
  wfdb.wrsamp(
    "rec",
    fs=rate,
    units=["mV"] * len(names),
    sig_name=names,
    p_signal=values,
    fmt=["16"] * len(names),
    write_dir=str(folder),
  )
  return os.path.join(str(folder), "rec")


def test_aliases_map_and_unknown_names_are_refused(generated, tmp_path):
  ecg = generated[3]
  assert signal.canonical_lead("MLII") == signal.canonical_lead("ML2") == "II"
  assert signal.canonical_lead("D1") == "I" and signal.canonical_lead("V") is None
  # a WFDB record with MLI/MLII for I/II and a respiration channel: aliases read, the channel ignored, limb derived
  names = ["MLI", "MLII", "V1", "V2", "V3", "V4", "V5", "V6", "RESP"]
  values = np.concatenate([ecg[:, [0, 1, 6, 7, 8, 9, 10, 11]], ecg[:, :1] * 0 + 0.5], axis=1)
  record = preprocess.read_record(_wfdb(tmp_path, names, values))
  report = record.leads
  assert report.recorded == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"]
  assert report.derived == ["III", "aVR", "aVL", "aVF"] and report.renamed == {
    "MLI": "I",
    "MLII": "II",
  }
  assert report.summary() == (
    "leads: 12 of 12 present; III, aVR, aVL, aVF derived from I and II; read 'MLI' as I, 'MLII' as II"
  )
  assert report.warnings() == ["channel(s) 'RESP' are no ECG lead; ignored"]
  np.testing.assert_allclose(record.ecg[:, 1], ecg[:, 1], atol=2e-3)
  # named by the caller (--leads): an unknown or refused name is a one-line error naming it
  path = str(tmp_path / "a.npy")
  np.save(path, ecg)
  with pytest.raises(
    preprocess.BadRecordError, match=r"bad lead name: .*'X': unknown lead name; use I, II"
  ):
    preprocess.read_record(path, 500, "mV", NAMES[:11] + ["X"])
  with pytest.raises(
    preprocess.BadRecordError, match=r"'V': a chest lead without its number .*: not mapped"
  ):
    preprocess.read_record(path, 500, "mV", NAMES[:11] + ["V"])
  aliased = preprocess.read_record(path, 500, "mV", ["D1", "ML2"] + NAMES[2:])
  np.testing.assert_array_equal(aliased.ecg, preprocess.read_record(path, 500, "mV").ecg)


def test_clipping_is_found_in_the_recorded_samples(generated, tmp_path):
  """At 360 Hz (MIT-BIH's rate) a clipped plateau is exact in the file, not after resampling to 500 Hz."""
  ecg = signal.resample(generated[4], 500, 360)
  ecg[:, 1] = np.clip(ecg[:, 1], None, np.quantile(ecg[:, 1], 0.96))
  record = preprocess.read_record(_wfdb(tmp_path, NAMES, ecg, rate=360))
  assert record.leads.clipped == ["II"]


class StubScorer:
  """The predictor's model interface without a model (the model is not under test here): no OOD reference."""

  labels = [dict(ja="洞調律", en="sinus rhythm", group_ja="調律", group_en="rhythm")]
  lead_mask = False
  no_reference = None

  def encode(self, ecg_mv):
    return np.zeros((len(ecg_mv), 4)), np.zeros((len(ecg_mv), 2))

  def scores_of(self, embeddings):
    return np.zeros((len(embeddings), 1))

  def ood(self, features, percentile=None):
    return None


def test_predictor_prints_leads_and_warns_naming_them(generated, tmp_path, capsys, monkeypatch):
  ecg = generated[5].copy()
  ecg[:, 6:] = 0.0  # a limb-lead recording put in a 12-lead frame, chest leads zero
  path = str(tmp_path / "limbs.npy")
  np.save(path, ecg)
  record = preprocess.read_record(path, 500, "mV")

  monkeypatch.setattr(predict, "open_scorer", lambda *a: (StubScorer(), "stub"))
  predict.main(["--workdir", "x", "--fs", "500", "--units", "mV", "--top-k", "1", path])
  out, err = capsys.readouterr()
  assert out.splitlines()[2] == (
    "  leads: 6 of 12 present (I, II, III, aVR, aVL, aVF)  [1 warning(s) on stderr]"
  )
  assert err.splitlines() == [f"warning: {path}: {w}" for w in record.leads.warnings()]
  assert "flat lead(s) V1, V2, V3, V4, V5, V6" in err


def test_exported_module_checks_leads_as_the_predictor_does(generated):
  """modeling_ecg.check_leads (torch, in every export folder) flags the same leads as quality.check."""
  torch = pytest.importorskip("torch")
  from ecg_contrastive.export import modeling_ecg

  cases = [generated[0].copy() for _ in range(4)]
  cases[0][:, [2, 7]] = 0.0
  cases[1][:, 6] = np.minimum(cases[1][:, 6], np.quantile(cases[1][:, 6], 0.97))
  cases[2][:, 9] += np.random.default_rng(0).normal(0, 0.3, 5000)
  cases[3][:, 4] *= 20 / np.ptp(cases[3][:, 4])
  cases = [np.round(c * 1000) / 1000 for c in cases]  # on the int16 grid, as every model input is
  got = modeling_ecg.check_leads(torch.from_numpy(np.stack(cases).transpose(0, 2, 1).copy()))
  for ecg, found in zip(cases, got):
    want = quality.check(ecg)
    assert (
      found["flat"] == want.flat
      and found["clipped"] == want.clipped
      and found["present"] == want.present
    )
    assert list(found["noisy"]) == list(want.noisy) and list(found["implausible"]) == list(
      want.implausible
    )
    assert len(found["warnings"]) == len(want.warnings()) == 1


def test_a_record_with_fewer_leads_goes_into_the_12_lead_frame_with_the_others_zero(
  generated, tmp_path
):
  """MIT-BIH's layout (MLII and V1 at 360 Hz): II and V1 placed, the ten others zero and named as missing (not
  derived: I is not there), not reported as flat; I, II and V2 (.npy): the limb leads derived, five chest leads
  missing; no ECG lead at all: a one-line error."""
  ecg = generated[2]
  at_360 = signal.resample(ecg[:, [1, 6]], 500, 360)
  record = predict.read_record(_wfdb(tmp_path, ["MLII", "V1"], at_360, rate=360))
  missing = ["I", "III", "aVR", "aVL", "aVF", "V2", "V3", "V4", "V5", "V6"]
  assert record.leads.missing == missing and record.leads.recorded == ["II", "V1"]
  assert record.leads.present == ["II", "V1"] and record.leads.flat == []
  assert not record.ecg[:, [0, 2, 3, 4, 5, 7, 8, 9, 10, 11]].any()
  np.testing.assert_allclose(record.ecg[50:-50, [1, 6]], ecg[50:-50, [1, 6]], atol=0.02)
  assert record.leads.summary() == (
    "leads: 2 of 12 present (II, V1); read 'MLII' as II; missing I, III, aVR, aVL, aVF, V2, V3, V4, V5, V6 "
    "(zero-filled)"
  )
  assert record.leads.warnings() == []  # the missing leads are said once, by the predictor's note
  assert predict.missing_leads_note(record, lead_mask=False) == (
    f"missing lead(s) {', '.join(missing)} zero-filled: the model was trained on 12 leads, so findings that "
    "depend on the missing leads are guesses"
  )
  assert predict.missing_leads_note(record, lead_mask=True).endswith(
    "the model's lead mask tells it which leads are present"
  )
  path = str(tmp_path / "three.npy")
  np.save(path, ecg[:, [0, 1, 7]])
  three = predict.read_record(path, 500, "mV", ["I", "II", "V2"])
  assert three.leads.missing == ["V1", "V3", "V4", "V5", "V6"]
  assert three.leads.derived == ["III", "aVR", "aVL", "aVF"] and three.leads.present == [
    "I",
    "II",
    "III",
    "aVR",
    "aVL",
    "aVF",
    "V2",
  ]
  np.testing.assert_allclose(three.ecg[:, 2], ecg[:, 1] - ecg[:, 0], atol=2e-3)  # III = II - I
  np.save(tmp_path / "full.npy", ecg)
  full = predict.read_record(
    str(tmp_path / "full.npy"), 500, "mV"
  )  # 12 leads: exactly preprocess's record
  np.testing.assert_array_equal(
    full.ecg, preprocess.read_record(str(tmp_path / "full.npy"), 500, "mV").ecg
  )
  assert full.leads.missing == [] and full.leads.summary() == "leads: 12 of 12 present"
  np.save(tmp_path / "resp.npy", ecg[:, :1])
  with pytest.raises(preprocess.BadRecordError, match=r"bad lead name: .*'RESP'"):
    predict.read_record(str(tmp_path / "resp.npy"), 500, "mV", ["RESP"])
  with pytest.raises(preprocess.BadRecordError, match=r"no ECG lead: .*\['RESP'\]"):
    predict.read_record(_wfdb(tmp_path, ["RESP"], ecg[:, :1]))


def test_predictor_names_missing_leads_and_what_the_model_makes_of_them(
  generated, tmp_path, capsys, monkeypatch
):
  path = str(tmp_path / "one.npy")
  np.save(path, generated[1][:, 1:2])  # one lead, named with an alias
  missing = "I, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6"
  for lead_mask, says in (
    (
      False,
      "the model was trained on 12 leads, so findings that depend on the missing leads are guesses",
    ),
    (True, "the model's lead mask tells it which leads are present"),
  ):
    stub = StubScorer()
    stub.lead_mask = lead_mask
    monkeypatch.setattr(predict, "open_scorer", lambda *a, stub=stub: (stub, "stub"))
    predict.main(
      ["--workdir", "x", "--fs", "500", "--units", "mV", "--leads", "ML2", "--top-k", "1", path]
    )
    out, err = capsys.readouterr()
    assert out.splitlines()[2] == (
      f"  leads: 1 of 12 present (II); read 'ML2' as II; missing {missing} (zero-filled)"
    )
    assert err.splitlines() == [f"warning: {path}: missing lead(s) {missing} zero-filled: {says}"]
