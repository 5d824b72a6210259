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

A jax.custom_vjp keeps only per-row numbers (log-sum-exp, 1 / count) from the forward pass. The backward pass
recomputes each tile's logits and turns them into D = d(loss)/d(logit): for softmax, the sum of both directions'
(p - target) at that logit (the e->t row's, from the ECG's lse, and the t->e row's, from the text's lse, which
travels with the column tile); for sigmoid, sigmoid(logit) - label. Each device computes the gradient of its own
rows only, in two passes one after the other: its ECGs against all text tiles (d ECG = scale D texts, and d scale,
d bias), then its texts against all ECG tiles (d text = scale D^T ECGs). Every logit is computed once in each
pass, as the dense backward computes it for its two (b, B) blocks, and no gradient has to travel back.

Columns reach a device one tile at a time: tile k of every device's block (T columns) is in flight while the
device's rows, in chunks of T, meet it; then tile k + 1. Two ways (`ring`):
- all-gather (ring=False): the n devices' tile k are all-gathered, (n, T, E).
- ring (ring=True): each device's tile k travels around the 'data' axis with ppermute; after n steps every
  device has seen it (transfer of the next tile can overlap the current one's compute).
Either way a device holds its own (b, E) rows and their (b, E) gradient plus O(n T E + T^2), never the (B, E)
embeddings of the other side: XLA's plan for value-and-gradient at B = 2^20, E = 256 on 8 devices is ~0.6 GiB
per device (BENCHMARKS.md), of which the inputs and their gradients are 0.5 GiB.

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


def _full(shape, value, dtype=jnp.float32) -> jax.Array:
  """A constant as a per-device value (a loop carry inside shard_map must be typed varying over 'data')."""
  return _varying(jnp.full(shape, value, dtype))


def _tile_logits(kind, r, col, scale, bias, r_ids):
  """One (Tr, T) tile of rows r against column tile col: raw dots z, logits (padding columns: -inf),
  positives (bool)."""
  z = jnp.dot(r, col["c"].T, preferred_element_type=jnp.float32)
  logits = scale * z + (bias if kind == _SIGMOID else 0.0)
  masked = jnp.where(col["valid"][None, :], logits, -jnp.inf)
  same = (r_ids[:, None] == col["id"][None, :]) & col["valid"][None, :]
  return z, masked, same


def _column_tiles(cols, ids, tile: int, **per_column) -> dict:
  """This device's column block as tiles of min(`tile`, b) columns: (k, T, ...) arrays of the embeddings, ids,
  offset in the block, validity (the last tile is padded) and any per-column numbers given."""
  b = cols.shape[0]
  tile = min(tile, b)
  tiles = {
    "c": _chunks(cols, tile),
    "id": _chunks(ids, tile),
    "off": _chunks(jnp.arange(b, dtype=jnp.int32), tile),
    "valid": _valid(b, tile),
  }
  return tiles | {name: _chunks(x, tile) for name, x in per_column.items()}


_SAME_ON_ALL = ("off", "valid")  # the column tiles' keys that do not depend on the device


def _ring_perm():
  n = jax.lax.axis_size(DATA_AXIS)
  return [(i, (i + 1) % n) for i in range(n)]


def _visit(ring: bool, local: dict, body, carry):
  """carry = body(carry, col, owner) for every column tile col of every device's block (owner: that device).

  Tile k of every block is in flight at a time: the ring passes it on with ppermute (n steps; each device holds
  one tile and the one it receives), the all-gather fetches the n devices' tile k at once. Either way a device
  holds O(T x E) of the other side, never the (B, E) embeddings."""
  n, me = jax.lax.axis_size(DATA_AXIS), jax.lax.axis_index(DATA_AXIS)

  def per_k(carry, col):
    if ring:  # offsets and padding are the same in every block: only the rest travels
      fixed = {k: col[k] for k in _SAME_ON_ALL}

      def step(state, s):
        carry, moving = state
        carry = body(
          carry, moving | fixed, (me - s) % n
        )  # at step s the tile of device me - s is here
        return (carry, jax.lax.ppermute(moving, DATA_AXIS, _ring_perm())), None

      moving = {k: v for k, v in col.items() if k not in _SAME_ON_ALL}
      return jax.lax.scan(step, (carry, moving), jnp.arange(n))[0][0], None
    cols = jax.tree.map(lambda x: jax.lax.all_gather(x, DATA_AXIS), col)  # (n, T, ...)
    step = lambda carry, s: (body(carry, jax.tree.map(lambda x: x[s], cols), s), None)
    return jax.lax.scan(step, carry, jnp.arange(n))[0], None

  return jax.lax.scan(per_k, carry, local)[0]


def _init_state(kind, rows_shape):
  """Per-row running state over all columns seen: (best logit, its column, hit, and the loss's sums)."""
  f = lambda v: _full(rows_shape, v)
  state = {"best": f(-jnp.inf), "best_col": _full(rows_shape, 0, jnp.int32), "hit": f(0.0)}
  if kind == _SOFTMAX:
    state.update(l=f(0.0), pos=f(0.0), cnt=f(0.0))  # running max m is "best"
  else:
    state.update(pair=f(0.0))
  return state


def _row_stats(kind, tile, ring, rows, cols, scale, bias, ids):
  """One direction, per device: this device's rows against all B columns -> per-row (loss, top-1 hit, lse,
  1 / count) as (nr, tr) chunks, and which entries are real rows."""
  b = rows.shape[0]
  tr = min(tile, b)
  rows_c, rid_c, row_valid = _chunks(rows, tr), _chunks(ids, tr), _valid(b, tr)

  def fold(state, col, owner):
    pos = owner * b + col["off"]  # global column index: ties go to the smaller one, as jnp.argmax

    def one_row_chunk(args):
      r, rid, st = args
      _, masked, same = _tile_logits(kind, r, col, scale, bias, rid)
      tmax = jnp.max(masked, axis=1)
      targ = jnp.argmax(masked, axis=1)
      tcol = pos[targ]
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
        pair = jnp.where(col["valid"][None, :], -jax.nn.log_sigmoid(sign * masked), 0.0)
        new["pair"] = st["pair"] + jnp.sum(pair, axis=1)
      return new

    return jax.lax.map(one_row_chunk, (rows_c, rid_c, state))

  state = _visit(ring, _column_tiles(cols, ids, tile), fold, _init_state(kind, row_valid.shape))
  if kind == _SOFTMAX:
    lse = state["best"] + jnp.log(state["l"])
    inv_cnt = 1.0 / state["cnt"]
    row_loss = lse - state["pos"] * inv_cnt
  else:
    lse = inv_cnt = jnp.zeros_like(state["best"])
    row_loss = state["pair"]
  return row_loss, state["hit"], lse, inv_cnt, row_valid


def _row_grads(kind, tile, ring, rows, cols, ids, scale, bias, row_stats, col_stats, own_scale):
  """d(loss)/d(this device's rows), and with own_scale d scale and d bias, by visiting all column tiles.

  d(loss)/d(logit of row r, column c) = D is the sum of two terms: the row's own direction (softmax:
  wr (p_rc - y_rc / cnt_r), p from the row's lse; sigmoid: wr (sigmoid - label)) and the column's direction,
  the other side's loss, in which this logit belongs to row c (softmax: wc (p'_cr - y / cnt_c), p' from the
  column's lse; sigmoid: the loss has one direction, the ECG rows': its term is in the pass whose rows are
  ECGs, with their weight). w is the cotangent of the device whose loss that row is. d rows = scale D cols:
  only this device's rows get a gradient, so no gradient travels; the other side's rows get theirs in the
  pass where they are the rows, and d scale = sum D z, d bias = sum D in one pass only (own_scale), so that
  each logit counts once. row_stats: (lse, 1 / count) per row, (nr, tr); col_stats: (lse, 1 / count, w) per
  column, (b,), travelling with the column tiles."""
  b = rows.shape[0]
  tr = min(tile, b)
  rows_c, rid_c, row_valid = _chunks(rows, tr), _chunks(ids, tr), _valid(b, tr)
  lse_r, inv_r, w_r = row_stats
  lse_c, inv_c, w_c = col_stats
  sig_rows = own_scale  # sigmoid: the pass with d scale is the ECG rows' own

  def grad(acc, col, _owner):
    def row_step(acc, i):
      drows, dscale, dbias = acc
      r, rid, rval = rows_c[i], rid_c[i], row_valid[i]
      z, masked, same = _tile_logits(kind, r, col, scale, bias, rid)
      if kind == _SOFTMAX:  # softmax - target, in each direction (padding columns: exp(-inf) = 0)
        own = jnp.exp(masked - lse_r[i][:, None]) - jnp.where(same, inv_r[i][:, None], 0.0)
        other = jnp.exp(masked - col["lse"][None, :]) - jnp.where(same, col["inv"][None, :], 0.0)
        dlogit = w_r * own + col["w"][None, :] * other
      else:  # sigmoid - label
        dlogit = jnp.where(col["valid"][None, :], jax.nn.sigmoid(masked) - same, 0.0)
        dlogit = dlogit * (w_r if sig_rows else col["w"][None, :])
      dlogit = jnp.where(rval[:, None], dlogit, 0.0)
      dr = scale * jnp.dot(dlogit, col["c"], preferred_element_type=jnp.float32)
      drows = jax.lax.dynamic_update_index_in_dim(drows, drows[i] + dr, i, 0)
      if own_scale:
        dscale, dbias = dscale + jnp.sum(dlogit * z), dbias + jnp.sum(dlogit)
      return (drows, dscale, dbias), None

    return jax.lax.scan(row_step, acc, jnp.arange(rows_c.shape[0]))[0]

  local = _column_tiles(cols, ids, tile, lse=lse_c, inv=inv_c, w=w_c)
  acc = (_full(rows_c.shape, 0.0), _full((), 0.0), _full((), 0.0))
  drows, dscale, dbias = _visit(ring, local, grad, acc)
  return drows.reshape(-1, rows.shape[1])[:b], dscale, dbias


def _flat(x, b):
  """(nr, tr) chunks of per-row numbers -> (b,)."""
  return x.reshape(-1)[:b]


def _after(x, *deps):
  """x, once deps are computed: the second pass starts after the first, so their buffers can share memory."""
  return jax.lax.optimization_barrier((x, *deps))[0]


def _sym_fwd(kind, tile, ring, ecg, txt, scale, bias, ids):
  """Per device: the loss summed over this device's rows (softmax: e->t rows and t->e rows; sigmoid: ECG rows
  against all texts), the e->t top-1 hits, and the per-row numbers the backward pass needs."""
  loss_e, hit_e, lse_e, inv_e, valid_e = _row_stats(kind, tile, ring, ecg, txt, scale, bias, ids)
  loss_sum = jnp.sum(jnp.where(valid_e, loss_e, 0.0))
  hits = jnp.sum(jnp.where(valid_e, hit_e, 0.0))
  lse_t, inv_t = lse_e, inv_e  # sigmoid: unused
  if kind == _SOFTMAX:  # t->e: the texts of this device against all ECGs, after the e->t pass
    txt2, ecg2 = _after((txt, ecg), loss_sum)
    loss_t, _, lse_t, inv_t, valid_t = _row_stats(kind, tile, ring, txt2, ecg2, scale, bias, ids)
    loss_sum = loss_sum + jnp.sum(jnp.where(valid_t, loss_t, 0.0))
  return (loss_sum, hits), (ecg, txt, scale, bias, ids, lse_e, inv_e, lse_t, inv_t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _sym(kind, tile, ring, ecg, txt, scale, bias, ids):
  """Per device: (this device's share of the loss sum, its e->t top-1 hits); see _sym_fwd."""
  return _sym_fwd(kind, tile, ring, ecg, txt, scale, bias, ids)[0]


def _sym_bwd(kind, tile, ring, residuals, cotangents):
  ecg, txt, scale, bias, ids, lse_e, inv_e, lse_t, inv_t = residuals
  g = cotangents[0]  # the hits have no gradient
  b = ecg.shape[0]
  w = (
    _full((b,), 0.0) + g
  )  # the cotangent of this device's loss, per row: travels with its rows as columns
  grads = functools.partial(_row_grads, kind, tile, ring, ids=ids, scale=scale, bias=bias)
  # the ECG rows first (with d scale, d bias), then the text rows: one pass's buffers live at a time
  decg, dscale, dbias = grads(
    ecg,
    txt,
    row_stats=(lse_e, inv_e, g),
    col_stats=(_flat(lse_t, b), _flat(inv_t, b), w),
    own_scale=True,
  )
  txt2, ecg2 = _after((txt, ecg), decg)
  dtxt, _, _ = grads(
    txt2,
    ecg2,
    row_stats=(lse_t, inv_t, g),
    col_stats=(_flat(lse_e, b), _flat(inv_e, b), w),
    own_scale=False,
  )
  return (
    decg.astype(ecg.dtype),
    dtxt.astype(txt.dtype),
    dscale.astype(scale.dtype),
    dbias.astype(bias.dtype),
    None,
  )


_sym.defvjp(_sym_fwd, _sym_bwd)


def _ids(ids, b: int) -> jax.Array:
  """This device's row ids: the given ones, or the global row indices (each row's own pair its only positive)."""
  if ids is None:
    return (jax.lax.axis_index(DATA_AXIS) * b + jnp.arange(b)).astype(jnp.int32)
  return ids


def _varying(x):
  """A replicated scalar as a per-device value: its gradients from each device then add up (transpose: psum)."""
  return jax.lax.pcast(x, DATA_AXIS, to="varying")


def _psum(*xs):
  """Sums over devices in one all-reduce (fewer collectives for the CPU runtime to match up across devices)."""
  return tuple(jax.lax.psum(jnp.stack(xs), DATA_AXIS))


def _local_softmax(tile, ring, ecg, txt, scale, ids):
  b = ecg.shape[0]
  ids = _ids(ids, b)
  loss, hits = _sym(_SOFTMAX, tile, ring, ecg, txt, _varying(scale), _full((), 0.0), ids)
  loss, hits = _psum(loss, hits)
  B = b * jax.lax.axis_size(DATA_AXIS)
  return loss / (2 * B), hits / B


def _local_sigmoid(tile, ring, ecg, txt, scale, bias, ids):
  b = ecg.shape[0]
  ids = _ids(ids, b)
  loss, hits = _sym(_SIGMOID, tile, ring, ecg, txt, _varying(scale), _varying(bias), ids)
  loss, hits = _psum(loss, hits)
  B = b * jax.lax.axis_size(DATA_AXIS)
  return loss / B, hits / B


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
