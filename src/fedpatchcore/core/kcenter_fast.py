"""Farthest-point (greedy k-center) selection that skips the rows a new centre cannot change.

The plain loop (:func:`fedpatchcore.core.coreset._greedy_numpy`) computes, at every step,
the distance from *every* row to the newest centre: N·p work per step, N·k·p in all. Late in
the loop almost none of those distances matters: a row only changes when the new centre is
nearer than its current one. This module keeps

* each row's current centre (its *group*; a group's rows sit in one contiguous segment of an
  index array, so a group that is skipped costs nothing),
* each group's radius (the largest half squared distance of its rows, and the first row that
  attains it, which also gives the next farthest point without scanning all N rows),
* the centres themselves, to get the distance from the newest centre to every older one,

and skips a whole group when the triangle inequality proves that no row of it can be nearer
to the new centre than to its own: ``d(c, c_j) >= 2 r_j`` (plus a margin for float rounding,
see :func:`rounding_margins`). This is the pruning that fast farthest-point samplers for point
clouds use, here with a row layout grouped by centre.

**Same indices as the plain loop.** Every row that is examined gets exactly the float32 value
the plain loop computes for it, ``(||x||²/2 - x·c) + ||c||²/2`` with the same half norms and the
same dot-product kernel (:class:`RowDots`, whose result for a row does not depend on which
other rows are in the call); a skipped group provably keeps its values (the margin covers the
worst-case rounding of both loops); and the next centre is the largest value with the
*smallest row index* among ties, as ``np.argmax`` picks it. So the selection is identical, not
merely as good, and duplicate rows and exact ties are broken the same way.

Nothing here imports Kedro or torch.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["RowDots", "choose_method", "greedy_skipping", "rounding_margin"]

#: Rows per gathered block when computing the examined rows' values (32 MiB at p = 128).
_GATHER_ROWS = 65536
#: A step whose examined rows exceed this share of all rows computes every row in one pass in
#: their own order (no gather); the values are the same.
_DENSE_SHARE = 0.25
#: Below this many rows one thread computes the dots (thread hand-off costs more than it saves).
_THREAD_MIN_ROWS = 32768
#: Offsets (fractions of a group's size) probed to bound how many of its rows, sorted by
#: decreasing distance, the new centre has to look at.
_PROBES = np.array([1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2])
#: Principal components kept per row for the cheap lower bound of a distance (rows of more
#: dimensions only); rows sampled to estimate them.
_FILTER_DIM = 32
#: The skipping loop hands over to the plain loop (exactly: the values are the same) when,
#: after ``max(_WARMUP, k // 8)`` steps, its last ``_WINDOW`` steps looked at more than this
#: share of all rows per step: data without low-dimensional structure cannot be pruned.
_GIVE_UP_SHARE = 0.6
_WARMUP = 64
_WINDOW = 32
#: Slots beyond N for appended groups (as a share of N) before the slot arrays are packed.
_SPARE_SLOTS = 1.0
_PCA_SAMPLE = 20000
#: ``method="auto"`` uses the plain loop for k below this (measured on 200k x 128 rows, 2 cores:
#: the skipping loop's first steps examine nearly every row and cost a little more than plain
#: ones; from a few dozen centres on the skipped groups pay for that).
AUTO_MIN_K = 64


# --------------------------------------------------------------------------------------
# a dot-product kernel whose per-row result does not depend on the other rows of the call
# --------------------------------------------------------------------------------------
def _faiss_dots(rows: np.ndarray, centre: np.ndarray, out: np.ndarray) -> None:
    import faiss

    faiss.fvec_inner_products_ny(
        faiss.swig_ptr(out), faiss.swig_ptr(centre), faiss.swig_ptr(rows), rows.shape[1], rows.shape[0]
    )


def _einsum_dots(rows: np.ndarray, centre: np.ndarray, out: np.ndarray) -> None:
    np.einsum("ij,j->i", rows, centre, out=out)


def _elementwise_dots(rows: np.ndarray, centre: np.ndarray, out: np.ndarray) -> None:
    # One IEEE multiply and one add per element and column, in column order: exactly reproducible.
    np.multiply(rows[:, 0], centre[0], out=out)
    for j in range(1, rows.shape[1]):
        out += rows[:, j] * centre[j]


_KERNELS = {"faiss": _faiss_dots, "einsum": _einsum_dots, "elementwise": _elementwise_dots}


def _is_row_deterministic(kernel, dim: int) -> bool:
    """Does ``kernel`` give every row the same float32 value alone, in a block and gathered?

    BLAS ``sgemv`` does not (OpenBLAS: a row's result depends on its position in the call and
    on the thread count), nor do faiss' batched kernels for p in {2, 4, 8}; this check runs
    once per dimension, on seeded data, and a kernel that fails it is not used.
    """
    rng = np.random.default_rng(dim)
    rows = rng.standard_normal((203, dim), dtype=np.float32)
    centre = np.ascontiguousarray(rows[17] * np.float32(0.5) + np.float32(0.25))
    try:
        full = np.empty(len(rows), dtype=np.float32)
        kernel(rows, centre, full)
        for order in (np.arange(len(rows))[::-1], rng.permutation(len(rows))):
            for lo, hi in ((0, 1), (3, 10), (5, 203), (0, 203), (100, 133)):
                part = np.ascontiguousarray(rows[order[lo:hi]])
                got = np.empty(len(part), dtype=np.float32)
                kernel(part, centre, got)
                if not np.array_equal(got, full[order[lo:hi]]):
                    return False
        shifted = np.empty(rows.size + 1, dtype=np.float32)[1:].reshape(rows.shape)  # misaligned copy
        shifted[:] = rows
        got = np.empty(len(rows), dtype=np.float32)
        kernel(shifted, centre, got)
        return bool(np.array_equal(got, full))
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - faiss without the helper
        return False


@functools.cache
def _kernel_name(dim: int) -> str:
    for name in ("faiss", "einsum", "elementwise"):
        if _is_row_deterministic(_KERNELS[name], dim):
            return name
    return "elementwise"  # pragma: no cover - exact by construction (one IEEE op per step)


def _blas_threads() -> int:
    """Threads numpy's BLAS would use now (the plain loop's old sgemv used that many)."""
    try:
        from threadpoolctl import threadpool_info

        counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
        if counts:
            return max(1, int(min(counts)))
    except Exception:  # pragma: no cover - threadpoolctl is a dependency; be safe anyway
        pass
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class RowDots:
    """``out[i] = rows[i] · centre`` in float32, the same value for a row in any call.

    The faiss helper (``fvec_inner_products_ny``: one SIMD dot per row) is used where it passes
    :func:`_is_row_deterministic`, else numpy's einsum, else an element-wise loop. Large calls
    are split into row blocks over ``threads`` threads (the kernels release the GIL); that does
    not change any value. Use as a context manager (or call :meth:`close`) to stop the threads.
    """

    def __init__(self, dim: int, threads: int | None = None) -> None:
        self.dim = int(dim)
        self.kernel_name = _kernel_name(self.dim)
        self._kernel = _KERNELS[self.kernel_name]
        self.threads = max(1, int(threads if threads is not None else _blas_threads()))
        self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __call__(self, rows: np.ndarray, centre: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``rows``: C-contiguous ``(n, dim)`` float32; ``centre``: contiguous ``(dim,)`` float32."""
        n = rows.shape[0]
        if self._pool is None or n < _THREAD_MIN_ROWS:
            self._kernel(rows, centre, out)
            return out
        step = -(-n // self.threads)
        futures = [
            self._pool.submit(self._kernel, rows[lo : lo + step], centre, out[lo : lo + step])
            for lo in range(0, n, step)
        ]
        for future in futures:
            future.result()
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> RowDots:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------
# the skipping loop
# --------------------------------------------------------------------------------------
def rounding_margin(dim: int, max_half_norm: float, unit: float = 2.0**-24) -> float:
    """How far a computed row value can be from the true half squared distance (float32 rows).

    The plain loop computes ``(h_x - x·c) + h_c`` with ``h = ||·||²/2``. The dot and each half
    norm are sums of ``dim`` products, each off by at most ``gamma * B²`` in any summation
    order, fused or not (``gamma = dim·u / (1 - dim·u)``, ``B`` the largest row norm); the two
    additions add at most ``5 u B²``. The bound is doubled for safety.
    """
    gamma = dim * unit / (1.0 - dim * unit)
    b2 = 2.0 * float(max_half_norm) * (1.0 + 2.0 * gamma) + 1e-30
    return 2.0 * (3.0 * gamma + 5.0 * unit) * b2 + 1e-30


def choose_method(n_rows: int, k: int, dtype: np.dtype) -> str:
    """``"skip"`` or ``"plain"`` for ``method="auto"``: plain for float64 and for small k."""
    if np.dtype(dtype) != np.float32 or k < AUTO_MIN_K or n_rows < 2 * AUTO_MIN_K:
        return "plain"
    return "skip"


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each ``(s, n)``, vectorised."""
    offsets = np.cumsum(sizes) - sizes
    return np.repeat(starts - offsets, sizes) + np.arange(int(sizes.sum()), dtype=np.intp)


def _principal_basis(work: np.ndarray, dims: int) -> np.ndarray:
    """``(p, dims)`` float32 leading principal directions of a seeded sample of the rows.

    Any orthonormal basis gives valid lower bounds (``||V^T (x - c)|| <= ||x - c||``); the
    principal one makes them tight, because patch features keep most of their variance in a
    few directions. Only the speed depends on this estimate, never the selection.
    """
    n_rows = len(work)
    rng = np.random.default_rng(0)
    sample = work[np.sort(rng.choice(n_rows, size=min(n_rows, _PCA_SAMPLE), replace=False))]
    sample = sample.astype(np.float64)
    sample -= sample.mean(axis=0)
    _, vectors = np.linalg.eigh(sample.T @ sample)
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)


def greedy_skipping(
    work: np.ndarray,
    half_norms: np.ndarray,
    k: int,
    starts: np.ndarray,
    dots: RowDots,
    *,
    stats: dict | None = None,
) -> np.ndarray:
    """The plain loop's selection (same indices), examining only rows that can change.

    Args:
        work: C-contiguous float32 ``(N, p)`` rows, as prepared for the plain loop.
        half_norms: ``||x||² / 2`` per row, float32, computed exactly as the plain loop does.
        k: number of centres, ``1 <= k < N``.
        starts: the first centre(s) (row indices), taken in this order.
        dots: the row kernel shared with the plain loop.
        stats: if a dict, receives counters (rows looked at, rows computed, dense steps, ...).
    """
    n_rows, dim = work.shape
    f32 = np.float32
    minus_inf = f32(-np.inf)
    max_half = float(half_norms.max(initial=0.0))
    delta = rounding_margin(dim, max_half)
    gamma = dim * 2.0**-24 / (1.0 - dim * 2.0**-24)
    max_norm = float(np.sqrt(2.0 * max_half * (1.0 + 2.0 * gamma)))
    # centre-to-centre squared distances come from a float32 BLAS dot and float64 norms
    eps_cross = 8.0 * gamma * max_norm**2 + 1e-12 * max_norm**2 + 1e-30
    dense_limit = _DENSE_SHARE * n_rows
    values = np.empty(n_rows, dtype=f32)
    chosen = np.empty(k, dtype=np.int64)

    # Group g (the rows nearest to centre g) occupies slots start[g] : start[g] + count[g] of the
    # slot arrays, sorted by decreasing min distance, then increasing row index. A row that
    # leaves a group leaves a hole (slot_row = -1) whose old value stays, so the group stays
    # sorted; a group starts with a live row. New groups are appended after ``end``; when the
    # arrays are full they are packed (holes dropped).
    capacity = n_rows + max(1, int(_SPARE_SLOTS * n_rows))
    slot_row = np.empty(capacity, dtype=np.intp)
    slot_dist = np.empty(capacity, dtype=f32)  # the plain loop's min distance of the slot's row
    use_filter = dim > _FILTER_DIM
    if use_filter:  # principal coordinates: cheap, contiguous lower bounds of distances
        basis = _principal_basis(work, _FILTER_DIM)
        slot_coords = np.empty((capacity, _FILTER_DIM), dtype=f32)
        coord_slack = 2.0 * np.sqrt(_FILTER_DIM) * (gamma + 1e-6) * max_norm + 1e-12
    where = np.empty(n_rows, dtype=np.intp)  # slot of each row
    group_of = np.zeros(n_rows, dtype=np.intp)
    start = np.zeros(k, dtype=np.intp)
    count = np.zeros(k, dtype=np.intp)
    group_max = np.full(k, -np.inf, dtype=f32)  # min distance of the group's first (live) row
    group_arg = np.zeros(k, dtype=np.intp)  # that row
    centres = np.empty((k, dim), dtype=f32)
    centre_sq = np.empty(k, dtype=np.float64)
    end = 0
    looked = computed = dense_steps = groups_examined = 0
    recent = np.zeros(_WINDOW, dtype=np.int64)  # slots looked at in the last steps
    give_up_after = max(_WARMUP, k // 8)
    plain_from = k

    def row_values(index: int, rows: np.ndarray) -> np.ndarray:
        """The plain loop's values for ``rows``: ``(h - x·c) + h_c``, same ops, same kernel."""
        centre = work[index]
        if len(rows) > dense_limit:
            dots(work, centre, values)
            np.subtract(half_norms, values, out=values)
            np.add(values, half_norms[index], out=values)
            return values[rows]
        out = np.empty(len(rows), dtype=f32)
        for lo in range(0, len(rows), _GATHER_ROWS):
            part = rows[lo : lo + _GATHER_ROWS]
            block = work[part]  # fancy indexing copies whole rows (np.take(axis=0) is ~5x slower)
            piece = out[lo : lo + len(part)]
            dots(block, centre, piece)
            np.subtract(half_norms[part], piece, out=piece)
            np.add(piece, half_norms[index], out=piece)
        return out

    for t in range(k):
        if t < len(starts):
            index = int(starts[t])
        else:
            best = group_max[:t].max()
            ties = np.flatnonzero(group_max[:t] == best)
            index = int(group_arg[ties[0]] if len(ties) == 1 else group_arg[ties].min())
        chosen[t] = index
        if t + 1 == k:
            break
        centre = work[index]
        centres[t] = centre
        centre_sq[t] = float(np.dot(centre.astype(np.float64), centre.astype(np.float64)))

        if t == 0:  # every row joins the first centre's group
            dense_steps += 1
            looked += n_rows
            computed += n_rows
            dots(work, centre, values)
            np.subtract(half_norms, values, out=values)
            np.add(values, half_norms[index], out=values)
            values[index] = minus_inf
            rows = np.lexsort((np.arange(n_rows), -values))
            slot_row[:n_rows] = rows
            slot_dist[:n_rows] = values[rows]
            if use_filter:
                for lo in range(0, n_rows, _GATHER_ROWS):
                    part = rows[lo : lo + _GATHER_ROWS]
                    np.matmul(work[part], basis, out=slot_coords[lo : lo + len(part)])
            where[rows] = np.arange(n_rows)
            start[0], count[0], end = 0, n_rows, n_rows
            group_max[0], group_arg[0] = slot_dist[0], rows[0]
            continue

        # Groups the new centre may take rows from: a row x of group j (centre c_j) at true
        # distance e_x <= D/2 from c_j, D = d(c, c_j), has d(x, c) >= D - e_x >= e_x, so its value
        # stays; rows are sorted by decreasing value, so only a prefix of a group can change.
        cross = np.dot(centres[:t], centre).astype(np.float64)
        d2 = centre_sq[:t] + centre_sq[t] - 2.0 * cross - eps_cross
        np.maximum(d2, 0.0, out=d2)
        # Largest value a row may have and provably keep: e_up = sqrt(2 (m + delta)) <= D / 2.
        keep_below = d2 / 8.0 - delta
        home = group_of[index]
        groups = np.flatnonzero(group_max[:t] > keep_below)
        slot = int(np.searchsorted(groups, home))
        if slot == len(groups) or groups[slot] != home:
            groups = np.insert(groups, slot, home)  # the new centre itself always leaves its group
        sizes, firsts, limit = count[groups], start[groups], keep_below[groups]
        # Bound each prefix by probing the sorted group at a few offsets.
        offsets = (sizes[:, None] * _PROBES).astype(np.intp)
        below = slot_dist[firsts[:, None] + offsets] <= limit[:, None]
        prefix = np.where(below.any(axis=1), offsets[np.arange(len(groups)), below.argmax(axis=1)], sizes)
        prefix[slot] = max(prefix[slot], where[index] - firsts[slot] + 1)
        np.maximum(prefix, 1, out=prefix)

        positions = _ranges(firsts, prefix)
        rows = slot_row[positions]
        current = slot_dist[positions]
        need = np.flatnonzero((current > np.repeat(limit, prefix)) & (rows >= 0))
        looked += len(need)
        if use_filter and len(need):  # drop rows whose principal part is already far enough
            diff = slot_coords[positions[need]]
            diff -= slot_coords[where[index]]
            bound = np.sqrt(np.einsum("ij,ij->i", diff, diff).astype(np.float64))
            bound *= 1.0 - 1e-5
            bound -= coord_slack
            need = need[~((bound > 0.0) & (bound * bound >= 2.0 * (current[need] + delta)))]
        candidates = rows[need]
        computed += len(candidates)
        dense_steps += len(candidates) > dense_limit
        got = row_values(index, candidates)
        smaller = got < current[need]
        groups_examined += len(groups)

        # Movers leave holes (their old value stays as a sort key, so the group stays sorted);
        # a group whose first slot became a hole starts at its next live slot.
        mover_slots = positions[need[smaller]]
        mover_values = got[smaller]
        home_slot = where[index]
        is_home = mover_slots == home_slot
        if is_home.any():
            mover_values[is_home] = minus_inf
        else:  # the new centre leaves its group even when its value did not drop (duplicates)
            mover_slots = np.append(mover_slots, home_slot)
            mover_values = np.append(mover_values, minus_inf)
        movers = slot_row[mover_slots]
        if use_filter:
            mover_coords = slot_coords[mover_slots]
        slot_row[mover_slots] = -1
        ends = firsts + sizes
        for g in np.flatnonzero(slot_row[firsts] < 0):
            firsts[g] = _next_live(slot_row, int(firsts[g]), int(ends[g]))
        start[groups] = firsts
        count[groups] = ends - firsts

        # The moved rows become the new centre's group, sorted, appended at the end.
        order = np.lexsort((movers, -mover_values))
        movers, mover_values = movers[order], mover_values[order]
        if end + len(movers) > capacity:
            end = _pack(slot_row, slot_dist, slot_coords if use_filter else None, where, start, count, t)
        new_slots = np.arange(end, end + len(movers))
        slot_row[new_slots] = movers
        slot_dist[new_slots] = mover_values
        if use_filter:
            slot_coords[new_slots] = mover_coords[order]
        where[movers] = new_slots
        group_of[movers] = t
        start[t], count[t] = end, len(movers)
        end += len(movers)

        touched = np.append(groups, t)
        alive = count[touched] > 0
        group_max[touched[~alive]] = minus_inf
        heads = start[touched[alive]]
        group_max[touched[alive]] = slot_dist[heads]
        group_arg[touched[alive]] = slot_row[heads]

        recent[t % _WINDOW] = len(positions)
        if t >= give_up_after and recent.sum() > _GIVE_UP_SHARE * _WINDOW * n_rows:
            min_dist = np.empty(n_rows, dtype=f32)
            live = np.flatnonzero(slot_row[:end] >= 0)
            min_dist[slot_row[live]] = slot_dist[live]
            _plain_steps(work, half_norms, min_dist, chosen, t + 1, dots)
            plain_from = t + 1
            break

    if stats is not None:
        stats.update(
            rows_looked_at=looked,
            rows_computed=computed,
            plain_rows=n_rows * max(k - 1, 0),
            groups_examined=groups_examined,
            dense_steps=dense_steps,
            plain_from_step=plain_from,
        )
    return chosen


def _plain_steps(
    work: np.ndarray, half_norms: np.ndarray, min_dist: np.ndarray, chosen: np.ndarray, first: int, dots
) -> None:
    """The plain loop's steps ``first..k-1`` from the min distances after step ``first - 1``."""
    buffer = np.empty_like(min_dist)
    minus_inf = min_dist.dtype.type(-np.inf)
    for i in range(first, len(chosen)):
        index = int(np.argmax(min_dist))
        chosen[i] = index
        if i + 1 < len(chosen):
            dots(work, work[index], buffer)
            np.subtract(half_norms, buffer, out=buffer)
            np.add(buffer, half_norms[index], out=buffer)
            np.minimum(min_dist, buffer, out=min_dist)
            min_dist[index] = minus_inf


def _next_live(slot_row: np.ndarray, first: int, end: int, chunk: int = 256) -> int:
    """First slot in ``[first, end)`` that holds a row (``end`` if none)."""
    while first < end:
        live = np.flatnonzero(slot_row[first : min(end, first + chunk)] >= 0)
        if len(live):
            return first + int(live[0])
        first += chunk
    return end


def _pack(
    slot_row: np.ndarray,
    slot_dist: np.ndarray,
    slot_coords: np.ndarray | None,
    where: np.ndarray,
    start: np.ndarray,
    count: np.ndarray,
    t: int,
) -> int:
    """Move the live slots of groups ``0..t-1`` to the front, in group order; return the new end."""
    sizes = count[:t]
    positions = _ranges(start[:t], sizes)
    live = slot_row[positions] >= 0
    positions = positions[live]
    kept = np.add.reduceat(live.astype(np.intp), np.cumsum(sizes) - sizes) if len(live) else sizes
    kept = np.where(sizes > 0, kept, 0)
    rows = slot_row[positions]
    slot_dist[: len(rows)] = slot_dist[positions]
    if slot_coords is not None:
        slot_coords[: len(rows)] = slot_coords[positions]
    slot_row[: len(rows)] = rows
    where[rows] = np.arange(len(rows))
    start[:t] = np.cumsum(kept) - kept
    count[:t] = kept
    return len(rows)
