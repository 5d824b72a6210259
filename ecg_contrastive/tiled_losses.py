"""Tiled contrastive losses: the results of losses.softmax_loss / sigmoid_loss without the (b, B) logit blocks.

losses.py keeps on each device its (b, B) logit blocks (b = B / n rows against all B columns), which at
B = 2^20 on 8 devices is 512 GiB per block. Here each device visits the columns in tiles of T and its own rows
in chunks of T, so it holds one (T, T) logit tile at a time (Inf-CL, arXiv 2410.17243; the flash-attention trick):

- softmax: an online log-sum-exp per row (running max m, running sum l of exp(logit - m)), the sum of the
  logits of the row's positives and their count; row loss = m + log l - (sum of positive logits) / count.
  The t->e direction is the same pass with the roles of ECG and text swapped (its rows are this device's
  texts, its columns all ECGs), which is what the dense loss computes as its second (b, B) block.
- sigmoid: the sum of -log sigmoid(+-logit) over the tiles.
- top-1 accuracy: a running max and the global column index of the first maximum per row (ties go to the
  smaller column index, as jnp.argmax), and whether that column is a positive.

A jax.custom_vjp keeps only per-row numbers (log-sum-exp, 1 / count) from the forward pass; the backward pass
recomputes each tile's logits and turns them into d(loss)/d(logit) (softmax: p - target; sigmoid:
sigmoid(logit) - label), then into the gradients of rows, columns, scale and bias. Both passes are loops
(lax.scan / lax.map) so XLA keeps one tile alive at a time.

Columns reach a device in one of two ways (`ring`):
- all-gather (ring=False): the other side's (B, E) embeddings are all-gathered; the column gradient (B, E)
  goes back with a reduce-scatter (psum_scatter). Memory: O(B x E + T x T) per device.
- ring (ring=True): each device's (b, E) column block travels around the 'data' axis with ppermute; after n
  steps every device has seen every block. The backward pass sends the block round again with its gradient
  accumulating beside it, so the gradient arrives home with the block. Memory: O(b x E + T x T) per device.

With T >= B one tile would be the dense loss's whole (b, B) block, so the dense loss (losses.py) runs instead:
configs/paper.py's T = 4096 leaves batches up to 4096 exactly as they were.

Positives: with positive_ids, every column with the row's id (its own pair has it); without, the row's own pair
only, i.e. ids = global row indices. Padding (T need not divide anything) is masked.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ecg_contrastive.losses import sigmoid_loss, softmax_loss
from ecg_contrastive.sharding import DATA_AXIS

_SOFTMAX, _SIGMOID = "softmax", "sigmoid"


def _chunks(x: jax.Array, size: int, fill=0) -> jax.Array:
  """(N, ...) -> (ceil(N / size), size, ...), padded at the end with `fill`."""
  pad = -x.shape[0] % size
  if pad:
    x = jnp.concatenate([x, jnp.full((pad, *x.shape[1:]), fill, x.dtype)])
  return x.reshape(-1, size, *x.shape[1:])


def _valid(n: int, size: int) -> jax.Array:
  """(chunks, size) bool: True on the n real entries, False on the padding of _chunks."""
  return _chunks(jnp.ones((n,), bool), size, False)


def _tile_logits(kind, r, c, scale, bias, r_ids, c_ids, c_valid):
  """One (Tr, Tc) tile: raw dots z, logits (masked columns: -inf), positives (bool)."""
  z = jnp.dot(r, c.T, preferred_element_type=jnp.float32)
  logits = scale * z + (bias if kind == _SIGMOID else 0.0)
  masked = jnp.where(c_valid[None, :], logits, -jnp.inf)
  same = (r_ids[:, None] == c_ids[None, :]) & c_valid[None, :]
  return z, masked, same


def _full(shape, value, dtype=jnp.float32) -> jax.Array:
  """A constant as a per-device value (a loop carry inside shard_map must be typed varying over 'data')."""
  return _varying(jnp.full(shape, value, dtype))


def _init_state(kind, rows_shape):
  """Per-row running state over all columns seen: (best logit, its column, hit, and the loss's sums)."""
  f = lambda v: _full(rows_shape, v)
  state = {"best": f(-jnp.inf), "best_col": _full(rows_shape, 0, jnp.int32), "hit": f(0.0)}
  if kind == _SOFTMAX:
    state.update(l=f(0.0), pos=f(0.0), cnt=f(0.0))  # running max m is "best"
  else:
    state.update(pair=f(0.0))
  return state


def _fold_block(kind, tile, state, rows, cols, scale, bias, row_ids, col_ids, col_pos):
  """Updates the per-row state (chunks of rows, (nr, tr) arrays) with one column block (Bc, E)."""
  rows_c, rid_c = rows  # (nr, tr, E), (nr, tr)
  tc = min(tile, cols.shape[0])
  c_t, cid_t, cpos_t, cval_t = (
    _chunks(cols, tc),
    _chunks(col_ids, tc),
    _chunks(col_pos, tc),
    _valid(cols.shape[0], tc),
  )

  def one_row_chunk(args):
    r, rid, st = args

    def step(st, col_tile):
      c, cid, cpos, cval = col_tile
      _, masked, same = _tile_logits(kind, r, c, scale, bias, rid, cid, cval)
      tmax = jnp.max(masked, axis=1)
      targ = jnp.argmax(masked, axis=1)
      tcol = cpos[targ]
      thit = jnp.take_along_axis(same, targ[:, None], axis=1)[:, 0].astype(jnp.float32)
      better = (tmax > st["best"]) | ((tmax == st["best"]) & (tcol < st["best_col"]))
      new = dict(st)
      new["best"] = jnp.maximum(st["best"], tmax)
      new["best_col"] = jnp.where(better, tcol, st["best_col"])
      new["hit"] = jnp.where(better, thit, st["hit"])
      if kind == _SOFTMAX:
        m = new["best"]
        new["l"] = st["l"] * jnp.exp(st["best"] - m) + jnp.sum(jnp.exp(masked - m[:, None]), axis=1)
        new["pos"] = st["pos"] + jnp.sum(jnp.where(same, masked, 0.0), axis=1)
        new["cnt"] = st["cnt"] + jnp.sum(same, axis=1, dtype=jnp.float32)
      else:
        sign = jnp.where(same, 1.0, -1.0)
        pair = jnp.where(cval[None, :], -jax.nn.log_sigmoid(sign * masked), 0.0)
        new["pair"] = st["pair"] + jnp.sum(pair, axis=1)
      return new, None

    return jax.lax.scan(step, st, (c_t, cid_t, cpos_t, cval_t))[0]

  return jax.lax.map(one_row_chunk, (rows_c, rid_c, state))


def _grad_block(kind, tile, rows, cols, scale, bias, col_ids, lse, inv_cnt, row_valid, g, acc):
  """Adds the gradients of g x (the loss over one column block (Bc, E)) to acc = (d rows (nr, tr, E), d cols
  (Bc, E), d scale, d bias). The accumulators are loop carries updated in place: no stacked copies."""
  rows_c, rid_c = rows
  tc = min(tile, cols.shape[0])
  c_t, cid_t, cval_t = _chunks(cols, tc), _chunks(col_ids, tc), _valid(cols.shape[0], tc)
  nc = c_t.shape[0]
  pad = nc * tc - cols.shape[0]
  drows, dcols, dscale, dbias = acc
  dcols = jnp.concatenate([dcols, _full((pad, cols.shape[1]), 0.0)]) if pad else dcols

  def row_step(carry, i):
    drows, dcols, dscale, dbias = carry
    r, rid, lse_r, inv_r, rval = rows_c[i], rid_c[i], lse[i], inv_cnt[i], row_valid[i]

    def col_step(carry, j):
      dr, dcols, dscale, dbias = carry
      c, cid, cval = c_t[j], cid_t[j], cval_t[j]
      z, masked, same = _tile_logits(kind, r, c, scale, bias, rid, cid, cval)
      if kind == _SOFTMAX:  # d/dlogit of lse - mean of positive logits: softmax - target
        dlogit = jnp.exp(masked - lse_r[:, None]) - jnp.where(same, inv_r[:, None], 0.0)
      else:  # d/dlogit of -log sigmoid(+-logit): sigmoid(logit) - label
        dlogit = jnp.where(cval[None, :], jax.nn.sigmoid(masked) - same, 0.0)
      dlogit = g * jnp.where(rval[:, None], dlogit, 0.0)
      dr = dr + scale * jnp.dot(dlogit, c, preferred_element_type=jnp.float32)
      dc = scale * jnp.dot(dlogit.T, r, preferred_element_type=jnp.float32)
      dcols = jax.lax.dynamic_update_slice_in_dim(
        dcols, jax.lax.dynamic_slice_in_dim(dcols, j * tc, tc) + dc, j * tc, 0
      )
      return (dr, dcols, dscale + jnp.sum(dlogit * z), dbias + jnp.sum(dlogit)), None

    dr0 = _full(r.shape, 0.0)
    (dr, dcols, dscale, dbias), _ = jax.lax.scan(
      col_step, (dr0, dcols, dscale, dbias), jnp.arange(nc)
    )
    drows = jax.lax.dynamic_update_index_in_dim(drows, drows[i] + dr, i, 0)
    return (drows, dcols, dscale, dbias), None

  (drows, dcols, dscale, dbias), _ = jax.lax.scan(
    row_step, (drows, dcols, dscale, dbias), jnp.arange(rows_c.shape[0])
  )
  return drows, dcols[: cols.shape[0]], dscale, dbias


def _gathered(cols, col_ids):
  """All columns on every device: (B, E), their ids and global positions."""
  cols_all = jax.lax.all_gather(cols, DATA_AXIS, tiled=True)
  ids_all = jax.lax.all_gather(col_ids, DATA_AXIS, tiled=True)
  return cols_all, ids_all, jnp.arange(cols_all.shape[0], dtype=jnp.int32)


def _ring_perm():
  n = jax.lax.axis_size(DATA_AXIS)
  return [(i, (i + 1) % n) for i in range(n)]


def _forward(kind, tile, ring, rows, cols, scale, bias, row_ids, col_ids):
  """Per-device pass -> (sum of row losses, hits, residuals for the backward)."""
  b = rows.shape[0]
  tr = min(tile, b)
  rows_c = (_chunks(rows, tr), _chunks(row_ids, tr))
  row_valid = _valid(b, tr)
  state = _init_state(kind, row_valid.shape)
  if not ring:
    cols_all, ids_all, pos_all = _gathered(cols, col_ids)
    state = _fold_block(kind, tile, state, rows_c, cols_all, scale, bias, row_ids, ids_all, pos_all)
  else:
    n, me, bc = jax.lax.axis_size(DATA_AXIS), jax.lax.axis_index(DATA_AXIS), cols.shape[0]

    def visit(carry, k):
      state, block, ids = carry
      owner = (me - k) % n  # the block visiting at step k started on device me - k
      pos = (owner * bc + jnp.arange(bc)).astype(jnp.int32)
      state = _fold_block(kind, tile, state, rows_c, block, scale, bias, row_ids, ids, pos)
      block, ids = jax.lax.ppermute((block, ids), DATA_AXIS, _ring_perm())
      return (state, block, ids), None

    state = jax.lax.scan(visit, (state, cols, col_ids), jnp.arange(n))[0][0]
  if kind == _SOFTMAX:
    lse = state["best"] + jnp.log(state["l"])
    inv_cnt = 1.0 / state["cnt"]
    row_loss = lse - state["pos"] * inv_cnt
  else:
    lse = inv_cnt = jnp.zeros_like(state["best"])
    row_loss = state["pair"]
  loss_sum = jnp.sum(jnp.where(row_valid, row_loss, 0.0))
  hits = jnp.sum(jnp.where(row_valid, state["hit"], 0.0))
  return loss_sum, hits, (lse, inv_cnt, row_valid)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _pass(kind, tile, ring, rows, cols, scale, bias, row_ids, col_ids):
  """Per device: (sum over this device's rows of their loss against all B columns, their top-1 hits)."""
  loss_sum, hits, _ = _forward(kind, tile, ring, rows, cols, scale, bias, row_ids, col_ids)
  return loss_sum, hits


def _pass_fwd(kind, tile, ring, rows, cols, scale, bias, row_ids, col_ids):
  loss_sum, hits, (lse, inv_cnt, _) = _forward(
    kind, tile, ring, rows, cols, scale, bias, row_ids, col_ids
  )
  return (loss_sum, hits), (rows, cols, scale, bias, row_ids, col_ids, lse, inv_cnt)


def _pass_bwd(kind, tile, ring, residuals, cotangents):
  rows, cols, scale, bias, row_ids, col_ids, lse, inv_cnt = residuals
  g = cotangents[0]  # the hits have no gradient
  b = rows.shape[0]
  tr = min(tile, b)
  rows_c = (_chunks(rows, tr), _chunks(row_ids, tr))
  row_valid = _valid(b, tr)
  grad = functools.partial(_grad_block, kind, tile, rows_c)
  zero = _full((), 0.0)
  drows = _full(row_valid.shape + rows.shape[1:], 0.0)
  if not ring:
    cols_all, ids_all, _ = _gathered(cols, col_ids)
    acc = (drows, _full(cols_all.shape, 0.0), zero, zero)
    drows, dcols_all, dscale, dbias = grad(
      cols_all, scale, bias, ids_all, lse, inv_cnt, row_valid, g, acc
    )
    dcols = jax.lax.psum_scatter(dcols_all, DATA_AXIS, scatter_dimension=0, tiled=True)
  else:

    def visit(carry, _):
      drows, dscale, dbias, block, ids, dblock = carry
      acc = (drows, dblock, dscale, dbias)
      drows, dblock, dscale, dbias = grad(block, scale, bias, ids, lse, inv_cnt, row_valid, g, acc)
      block, ids, dblock = jax.lax.ppermute((block, ids, dblock), DATA_AXIS, _ring_perm())
      return (drows, dscale, dbias, block, ids, dblock), None

    init = (drows, zero, zero, cols, col_ids, _full(cols.shape, 0.0))
    n = jax.lax.axis_size(DATA_AXIS)
    drows, dscale, dbias, _, _, dcols = jax.lax.scan(visit, init, None, length=n)[0]
  drows = drows.reshape(-1, rows.shape[1])[:b].astype(rows.dtype)
  return (
    drows,
    dcols.astype(cols.dtype),
    dscale.astype(scale.dtype),
    dbias.astype(bias.dtype),
    None,
    None,
  )


_pass.defvjp(_pass_fwd, _pass_bwd)


def _ids(ids, b: int) -> jax.Array:
  """This device's row ids: the given ones, or the global row indices (each row's own pair its only positive)."""
  if ids is None:
    return (jax.lax.axis_index(DATA_AXIS) * b + jnp.arange(b)).astype(jnp.int32)
  return ids


def _varying(x):
  """A replicated scalar as a per-device value: its gradients from each device then add up (transpose: psum)."""
  return jax.lax.pcast(x, DATA_AXIS, to="varying")


def _local_softmax(tile, ring, ecg, txt, scale, ids):
  b = ecg.shape[0]
  ids = _ids(ids, b)
  scale, zero = _varying(scale), _full((), 0.0)
  e2t, hits = _pass(_SOFTMAX, tile, ring, ecg, txt, scale, zero, ids, ids)
  t2e, _ = _pass(_SOFTMAX, tile, ring, txt, ecg, scale, zero, ids, ids)
  B = b * jax.lax.axis_size(DATA_AXIS)
  return jax.lax.psum(e2t + t2e, DATA_AXIS) / (2 * B), jax.lax.psum(hits, DATA_AXIS) / B


def _local_sigmoid(tile, ring, ecg, txt, scale, bias, ids):
  b = ecg.shape[0]
  ids = _ids(ids, b)
  loss, hits = _pass(_SIGMOID, tile, ring, ecg, txt, _varying(scale), _varying(bias), ids, ids)
  B = b * jax.lax.axis_size(DATA_AXIS)
  return jax.lax.psum(loss, DATA_AXIS) / B, jax.lax.psum(hits, DATA_AXIS) / B


def _check_tile(tile: int) -> None:
  if not isinstance(tile, int) or isinstance(tile, bool) or tile < 1:
    raise ValueError(f"tile must be a positive integer (columns per tile), got {tile!r}")


def tiled_softmax_loss(
  ecg: jax.Array,
  txt: jax.Array,
  scale: jax.Array,
  mesh: Mesh,
  positive_ids: jax.Array | None = None,
  *,
  tile: int,
  ring: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """losses.softmax_loss (same arguments and results) in (T, T) tiles, T = `tile`; `ring`: no all-gather.
  A tile that holds all B columns (T >= B) is the dense loss's (b, B) block: then the dense loss is used."""
  _check_tile(tile)
  if tile >= ecg.shape[0]:
    return softmax_loss(ecg, txt, scale, mesh, positive_ids)
  return _on_mesh(
    functools.partial(_local_softmax, tile, ring), mesh, (ecg, txt), (scale,), positive_ids
  )


def tiled_sigmoid_loss(
  ecg: jax.Array,
  txt: jax.Array,
  scale: jax.Array,
  bias: jax.Array,
  mesh: Mesh,
  positive_ids: jax.Array | None = None,
  *,
  tile: int,
  ring: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """losses.sigmoid_loss (same arguments and results) in (T, T) tiles, T = `tile`; `ring`: no all-gather.
  A tile that holds all B columns (T >= B) is the dense loss's (b, B) block: then the dense loss is used."""
  _check_tile(tile)
  if tile >= ecg.shape[0]:
    return sigmoid_loss(ecg, txt, scale, bias, mesh, positive_ids)
  return _on_mesh(
    functools.partial(_local_sigmoid, tile, ring), mesh, (ecg, txt), (scale, bias), positive_ids
  )


def _on_mesh(body, mesh: Mesh, rows: tuple, scalars: tuple, ids):
  """shard_map of body(*rows, *scalars, ids or None): rows and ids split over 'data', the rest replicated."""
  scalars = tuple(jnp.asarray(s, jnp.float32) for s in scalars)
  if ids is None:
    fn, args = (lambda *a: body(*a, None)), (*rows, *scalars)
  else:
    fn, args = body, (*rows, *scalars, jnp.asarray(ids, jnp.int32))
  specs = (
    (P(DATA_AXIS),) * len(rows)
    + (P(),) * len(scalars)
    + ((P(DATA_AXIS),) if ids is not None else ())
  )
  return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=(P(), P()))(*args)
