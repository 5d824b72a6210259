"""ECG <-> report retrieval recall at k, with duplicate reports counted as correct."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def retrieval_metrics(
  ecg_emb: np.ndarray,
  report_emb: np.ndarray,
  report_ids: np.ndarray,
  ks: Sequence[int] = (1, 5, 10),
  chunk: int = 1024,
) -> dict:
  """Recall@k both ways over one split.

  ecg_emb (N, E) and report_emb (U, E) unit-norm; report_ids (N,) the row of each record's
  report in report_emb (identical texts share a row). ECG -> report: the gallery is the U
  distinct reports, a hit is the record's own text in the top k. Report -> ECG: each distinct
  report queries the N ECGs, a hit is any ECG whose report is that text in the top k.
  Chunked so memory stays O(chunk x max(N, U)).
  """
  n, u = ecg_emb.shape[0], report_emb.shape[0]
  out = {}
  e2t_rank = np.empty(n, np.int64)
  for s in range(0, n, chunk):
    sim = ecg_emb[s : s + chunk] @ report_emb.T  # (c, U)
    own = sim[np.arange(sim.shape[0]), report_ids[s : s + chunk]]
    e2t_rank[s : s + chunk] = (sim > own[:, None]).sum(axis=1)
  queries = np.unique(report_ids)
  t2e_rank = np.empty(len(queries), np.int64)
  for s in range(0, len(queries), chunk):
    q = queries[s : s + chunk]
    sim = report_emb[q] @ ecg_emb.T  # (c, N)
    match = report_ids[None, :] == q[:, None]
    best_match = np.where(match, sim, -np.inf).max(axis=1)
    t2e_rank[s : s + chunk] = (np.where(match, -np.inf, sim) > best_match[:, None]).sum(axis=1)
  for k in ks:
    out[f"ecg_to_report_r@{k}"] = float((e2t_rank < k).mean())
    out[f"report_to_ecg_r@{k}"] = float((t2e_rank < k).mean())
  out["distinct_reports"] = int(len(queries))
  out["gallery_reports"] = int(u)
  return out
