"""Farthest-point (greedy k-center) selection that skips the rows a new centre cannot change.

The plain loop (:func:`fedpatchcore.core.coreset.kcenter._greedy_numpy`) computes, at every step,
the distance from *every* row to the newest centre: N·p work per step, N·k·p in all. Late in
the loop almost none of those distances matters: a row only changes when the new centre c is
nearer than its current centre c_j, i.e. when ``(x - c_j)·w > |w|²/2`` with ``w = c - c_j``
(x lies beyond the bisecting hyperplane). This module keeps

* each row's current centre (its *group*): a group's rows sit in one contiguous run of slots,
  sorted by decreasing distance, so a group that is skipped costs nothing and the group's
  first row is its farthest (the next centre is the best group head, no scan of all N rows);
* the centres and their distances to the newest one (one ``t x p`` product per step);
* per row, its residual ``x - c_j`` in the rows' leading principal coordinates (32 of them)
  and a bound of the rest of the residual.

A step then looks only at the groups whose farthest row could cross the hyperplane, only at
the prefix of such a group whose distance exceeds ``|w|/2`` (triangle inequality), and
only computes the rows whose principal-coordinate bound of ``(x - c_j)·w`` does not rule them
out (Cauchy-Schwarz on the remainder). Every bound carries a margin for float rounding (see
:func:`rounding_margin`). The first steps, which would look at most rows anyway, are one plain
pass; on data whose rows have no low-dimensional structure the loop hands over to the plain
loop by itself.

**Same indices as the plain loop.** Every row that is computed gets exactly the float32 value
the plain loop computes for it, ``(||x||²/2 - x·c) + ||c||²/2`` with the same half norms and the
same dot-product kernel (:class:`RowDots`, whose result for a row does not depend on which
other rows are in the call); a skipped row provably keeps its value (the margins cover the
worst-case rounding of both loops); and the next centre is the largest value with the
*smallest row index* among ties, as ``np.argmax`` picks it. So the selection is identical, not
merely as good, and duplicate rows and exact ties are broken the same way.

**Compiled sparse steps.** With numba installed (a dependency), the groups and rows a sparse
step looks at are found by two compiled kernels that evaluate the same bounds without numpy's
temporaries (:data:`COMPILED`); the exact values still come from :class:`RowDots`. The numpy
code stays as the fallback and is tested alongside.

Nothing here imports Kedro or torch.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np

__all__ = ["RowDots", "choose_method", "greedy_skipping", "rounding_margin"]

#: Rows per gathered block when computing the examined rows' values (32 MiB at p = 128).
_GATHER_ROWS = 65536
#: A step whose examined rows exceed this share of all rows computes every row in one pass in
#: their own order (no gather); the values are the same.
_DENSE_SHARE = 0.6
#: Below this many rows one thread computes the dots (thread hand-off costs more than it saves).
_THREAD_MIN_ROWS = 32768
#: Offsets (fractions of a group's size) probed to bound how many of its rows, sorted by
#: decreasing distance, the new centre has to look at.
_PROBES = np.array([1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2])
_BISECTIONS = 3
#: Principal components kept per row for the cheap lower bound of a distance (rows of more
#: dimensions only); rows sampled to estimate them.
_FILTER_DIM = 32
#: The skipping loop hands over to the plain loop (exactly: the values are the same) when,
#: after ``max(_WARMUP, k // 8)`` steps, its last ``_WINDOW`` steps looked at more than this
#: share of all rows per step: data without low-dimensional structure cannot be pruned.
_GIVE_UP_SHARE = 0.6
_WARMUP = 64
_WINDOW = 32
#: A sparse step looking at more prefix rows than this splits them over two threads.
_SPLIT_ROWS = 4096
#: Slots beyond N for appended groups (as a share of N) before the slot arrays are packed
#: (which also drops the holes that make prefixes longer).
_SPARE_SLOTS = 0.25
_PCA_SAMPLE = 20000
#: ``method="auto"`` uses the skipping loop from this many centres and rows on (measured on CNN
#: patch features projected to 128 dims, 2 cores: its first few hundred steps cost about a plain
#: step each, so it pays off from a few thousand centres: 200k rows -> 2000 centres 0.8x,
#: 100k -> 3000 1.1x, 200k -> 3000 1.7x, 470k -> 4700 2.4x, 470k -> 20000 3.7x).
AUTO_MIN_K = 2500
AUTO_MIN_ROWS = 50_000


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
# compiled kernels of a sparse step (numba): the same bounds as the numpy code below, without
# its temporaries; each step touches a few thousand slots, where numpy's per-call overhead and
# index arrays cost more than the arithmetic.
# --------------------------------------------------------------------------------------
#: Use the compiled kernels for sparse steps (tests switch it off to check the numpy path). numba
#: is imported only when a skipping loop first runs: every other run of the project (the plain
#: loop) does not pay its import.
COMPILED = importlib.util.find_spec("numba") is not None


@functools.cache
def _compiled() -> SimpleNamespace:
    """The kernels below, compiled (on first use; numba caches the machine code on disk)."""
    import numba

    # reassoc/contract only (no "finite math"): the sums may be reordered and fused, which the
    # error allowances cover (they hold in any summation order), while -inf (chosen rows, empty
    # groups) keeps its meaning in the comparisons. nogil: two halves of a step run on two threads.
    jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    return SimpleNamespace(
        open_groups=jit(_open_groups_kernel),
        open_rows=jit(_open_rows_kernel),
        prefix_total=jit(_prefix_total_kernel),
    )


def _open_groups_kernel(
    t, index, home, centres, centre_sq, centre_proj, group_max, start, count, slot_dist, where,
    eps_cross, delta, eta, res_slack,
):  # fmt: skip
    """Groups the new centre ``t`` may take rows from, their prefix lengths and bounds.

    The numpy version's steps 1-2, with centre-to-centre distances only where they matter (the
    distance in principal coordinates, a lower bound, already rules most groups out) and each
    group's size in place of its prefix: :func:`_open_rows_kernel` walks a group's slots (sorted
    by decreasing distance, holes included) only down to its limit, and
    :func:`_prefix_total_kernel` counts the true prefixes where a step may be dense.
    """
    q = centre_proj.shape[1]
    lead = min(q, 8)
    dim = centres.shape[1]
    groups = np.empty(t, np.int64)
    prefix = np.empty(t, np.int64)
    limit = np.empty(t, np.float64)
    rest_w = np.empty(t, np.float64)
    half_gap = np.empty(t, np.float64)
    m = 0
    total = 0
    for j in range(t):
        farthest = np.float64(group_max[j])
        if farthest == -np.inf and j != home:
            continue  # an empty group
        # |P^T w|² <= |w|² (1 + 2e-5) for the float32 basis, and so is any part of the sum: lower
        # bounds of the distance, from the leading coordinates first (one cache line a centre)
        squares = 0.0
        for a in range(lead):
            u = centre_proj[t, a] - centre_proj[j, a]
            squares += u * u
        if j != home and not (farthest > max(squares * (1.0 - 1e-4) - eps_cross, 0.0) / 8.0 - delta):
            continue
        for a in range(lead, q):
            u = centre_proj[t, a] - centre_proj[j, a]
            squares += u * u
        if j != home and not (farthest > max(squares * (1.0 - 1e-4) - eps_cross, 0.0) / 8.0 - delta):
            continue
        cross = 0.0
        for a in range(dim):
            cross += np.float64(centres[j, a]) * np.float64(centres[t, a])
        d2 = centre_sq[j] + centre_sq[t] - 2.0 * cross
        d2_low = max(d2 - eps_cross, 0.0)
        keep_below = d2_low / 8.0 - delta
        if not (farthest > keep_below) and j != home:
            continue
        rest = d2 + eps_cross - squares * (1.0 - 1e-6)
        # The whole group as its prefix: the walk stops at its first slot at or below the limit
        # (a binary search here would cost a cache miss per probe; the walk's reads are in order).
        length = count[j]
        groups[m] = j
        prefix[m] = length
        limit[m] = keep_below
        rest_w[m] = np.sqrt(max(rest, 0.0)) + res_slack
        half_gap[m] = d2_low / 2.0 - 2.0 * delta - eta
        total += length
        m += 1
    return groups[:m], prefix[:m], limit[:m], rest_w[:m], half_gap[:m], total


def _open_rows_kernel(
    groups, prefix, limit, rest_w, half_gap, start, slot_row, slot_dist, slot_res, slot_rc, slot_rn, centre_p
):
    """Rows of the group prefixes that no bound rules out, their current values, rows looked at.

    The bound of ``(x - c_j)·w`` is evaluated in float64 from the stored float32 residuals: more
    precise than the numpy path's float32, and ``eta`` covers the float32 residuals themselves.
    """
    q = slot_res.shape[1]
    total = 0
    for g in range(len(groups)):
        total += prefix[g]
    rows = np.empty(total, np.int64)
    current = np.empty(total, np.float32)
    n = 0
    looked = 0
    for g in range(len(groups)):
        first = start[groups[g]]
        for slot in range(first, first + prefix[g]):
            if not (np.float64(slot_dist[slot]) > limit[g]):
                break  # sorted: the rest of the group keeps its values too
            row = slot_row[slot]
            if row < 0:
                continue
            looked += 1
            lhs = 0.0
            for a in range(q):
                lhs += np.float64(slot_res[slot, a]) * np.float64(centre_p[a])
            lhs = lhs - np.float64(slot_rc[slot]) + np.float64(slot_rn[slot]) * rest_w[g]
            if lhs > half_gap[g]:
                rows[n] = row
                current[n] = slot_dist[slot]
                n += 1
    return rows[:n], current[:n], looked


def _prefix_total_kernel(groups, limit, start, count, slot_dist):
    """Slots above their group's limit, over ``groups`` (binary search in each sorted group)."""
    total = 0
    for g in range(len(groups)):
        first = start[groups[g]]
        lo, hi = first, first + count[groups[g]]
        while lo < hi:
            mid = (lo + hi) // 2
            if np.float64(slot_dist[mid]) <= limit[g]:
                hi = mid
            else:
                lo = mid + 1
        total += max(lo - first, 1)
    return total


def _compiled_sparse_rows(
    groups, prefix, limit, rest_w, half_gap, start, slot_row, slot_dist, slot_res, slot_rc, slot_rn, centre_p,
    work, half_norms, index, centre, dots,
):  # fmt: skip
    """:func:`_sparse_rows` with the compiled walk: (rows, values, looked, computed)."""
    rows, current, looked = _compiled().open_rows(
        groups, prefix, limit, rest_w, half_gap, start, slot_row, slot_dist, slot_res, slot_rc, slot_rn, centre_p
    )  # fmt: skip
    movers, values = _exact_values(rows, current, work, half_norms, index, centre, dots)
    return movers, values, looked, len(rows)


def _half_cut(prefix: np.ndarray, total: int) -> int:
    """Where to split a step's groups (at least 2) into two halves of about equal slot counts."""
    cut = int(np.searchsorted(np.cumsum(prefix), total // 2)) + 1
    return min(max(cut, 1), len(prefix) - 1)


def half_sq_distances(rows, row_half_norms, centre, centre_half_norm, dots, out) -> np.ndarray:
    """``out = (||x||²/2 - x·c) + ||c||²/2 = ||x - c||² / 2`` per row, in this order of float32
    operations: the plain loop's value, which every loop here must reproduce bit for bit."""
    dots(rows, centre, out)
    np.subtract(row_half_norms, out, out=out)
    np.add(out, centre_half_norm, out=out)
    return out


def _exact_values(rows, current, work, half_norms, index, centre, dots):
    """The plain loop's values of ``rows`` for the new centre; those below ``current`` move."""
    got = np.empty(len(rows), dtype=np.float32)
    for lo in range(0, len(rows), _GATHER_ROWS):
        part = rows[lo : lo + _GATHER_ROWS]
        half_sq_distances(
            work[part], half_norms[part], centre, half_norms[index], dots, got[lo : lo + len(part)]
        )
    smaller = got < current
    return rows[smaller], got[smaller]


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
    """``"skip"`` or ``"plain"`` for ``method="auto"``: skip for float32 and large k and N."""
    if np.dtype(dtype) != np.float32 or k < AUTO_MIN_K or n_rows < AUTO_MIN_ROWS:
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
    unit = 2.0**-24
    max_half = float(half_norms.max(initial=0.0))
    delta = rounding_margin(dim, max_half)
    gamma = dim * unit / (1.0 - dim * unit)
    max_norm = float(np.sqrt(2.0 * max_half * (1.0 + 2.0 * gamma))) + 1e-30
    # centre-to-centre squared distances come from a float32 BLAS dot and float64 norms
    eps_cross = 8.0 * gamma * max_norm**2 + 1e-12 * max_norm**2 + 1e-30
    dense_limit = _DENSE_SHARE * n_rows
    q = min(_FILTER_DIM, dim)
    basis = _principal_basis(work, q)
    # Error allowance of a computed cross-term bound res·pu + rn·rcn against the true
    # (x - c_j)·(c - c_j): projections of vectors of norm <= 2B are off by <= (gamma + 3u) 2B per
    # coordinate, the float32 basis is orthonormal to ~1e-6; generous by a factor of 4.
    eta = 4.0 * (4.0 * np.sqrt(q) * (gamma + 3.0 * unit) + 4e-6) * (2.0 * max_norm) ** 2
    # ... plus the two float32 dots res·P^T c and res·P^T c_j that make up res·P^T w per row
    eta += 4.0 * (q * unit / (1.0 - q * unit) + unit * np.sqrt(q)) * 2.0 * max_norm**2
    eta += 1e-5 * (2.0 * max_norm) ** 2  # ... and their sum, kept in float32
    res_slack = 4.0 * np.sqrt(q) * (gamma + 3.0 * unit) * 2.0 * max_norm  # for the complement norms
    values = np.empty(n_rows, dtype=f32)
    chosen = np.empty(k, dtype=np.int64)
    min_dist = np.full(n_rows, np.inf, dtype=f32)  # the plain loop's array, in row order

    # Group g (the rows nearest to centre g) occupies slots start[g] : start[g] + count[g],
    # sorted by decreasing min distance, then increasing row index. A row that leaves a group
    # leaves a hole (slot_row = -1) whose old value stays, so the group stays sorted; a group
    # starts with a live row. New groups are appended after ``end``; when the slot arrays are
    # full they are packed (holes dropped). Per slot also: the row's residual to its centre in
    # principal coordinates (res = P^T (x - c_g)) and a bound of the rest of it (rn >= |(I - PP^T)(x - c_g)|).
    capacity = n_rows + max(1, int(_SPARE_SLOTS * n_rows))
    slot_row = np.empty(capacity, dtype=np.intp)
    slot_dist = np.empty(capacity, dtype=f32)
    slot_res = np.empty((capacity, q), dtype=f32)
    slot_rn = np.empty(capacity, dtype=f32)
    slot_rc = np.empty(capacity, dtype=f32)  # res · P^T c_g
    where = np.empty(n_rows, dtype=np.intp)  # slot of each row
    group_of = np.zeros(n_rows, dtype=np.intp)
    start = np.zeros(k, dtype=np.intp)
    count = np.zeros(k, dtype=np.intp)
    group_max = np.full(k, -np.inf, dtype=f32)  # min distance of the group's first (live) row
    group_arg = np.zeros(k, dtype=np.intp)  # that row
    centres = np.empty((k, dim), dtype=f32)
    centre_sq = np.empty(k, dtype=np.float64)
    centre_proj = np.empty((k, q), dtype=np.float64)
    end = 0
    looked = computed = dense_steps = groups_examined = 0
    recent = np.zeros(_WINDOW, dtype=np.int64)  # rows looked at in the last steps
    give_up_after = max(_WARMUP, k // 8)
    plain_from = k

    def residuals(rows: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """res = P^T (x - c) and an upper bound of |(I - P P^T)(x - c)| for ``rows``."""
        res = np.empty((len(rows), q), dtype=f32)
        rest = np.empty(len(rows), dtype=f32)
        for lo in range(0, len(rows), _GATHER_ROWS):
            diff = work[rows[lo : lo + _GATHER_ROWS]]
            diff -= centre
            part = res[lo : lo + len(diff)]
            np.matmul(diff, basis, out=part)
            full = np.einsum("ij,ij->i", diff, diff).astype(np.float64) * (1.0 + 4.0 * gamma)
            full -= np.einsum("ij,ij->i", part, part).astype(np.float64) * (1.0 - 4.0 * gamma)
            np.maximum(full, 0.0, out=full)
            rest[lo : lo + len(diff)] = np.sqrt(full) + res_slack
        return res, rest

    def new_group(g: int, rows: np.ndarray, dist: np.ndarray, centre: np.ndarray, at: int) -> int:
        """Put ``rows`` (sorted) in slots ``at...`` as group ``g``; returns the new end."""
        res, rest = residuals(rows, centre)
        slots = np.arange(at, at + len(rows))
        slot_row[slots] = rows
        slot_dist[slots] = dist
        slot_res[slots] = res
        slot_rn[slots] = rest
        slot_rc[slots] = res @ centre_proj[g].astype(f32)
        where[rows] = slots
        group_of[rows] = g
        start[g], count[g] = at, len(rows)
        if len(rows):
            group_max[g], group_arg[g] = dist[0], rows[0]
        else:
            group_max[g] = minus_inf
        return at + len(rows)

    side_pool = ThreadPoolExecutor(1) if dots.threads > 1 else None  # second half of big steps
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
        centre64 = centre.astype(np.float64)
        centre_sq[t] = float(centre64 @ centre64)
        centre_proj[t] = centre64 @ basis.astype(np.float64)

        if t == 0:  # every row joins the first centre's group
            dense_steps += 1
            looked += n_rows
            computed += n_rows
            half_sq_distances(work, half_norms, centre, half_norms[index], dots, values)
            np.minimum(min_dist, values, out=min_dist)
            min_dist[index] = minus_inf
            rows = np.lexsort((np.arange(n_rows), -min_dist))
            end = new_group(0, rows, min_dist[rows], centre, 0)
            continue

        # 1. Groups the new centre may take rows from. A row x of group j (centre c_j) changes
        #    only if (x - c_j)·w > |w|²/2, w = c - c_j (the bisecting hyperplane). Cheap bounds of
        #    the left side: e_x |w| (triangle inequality: so only rows with e_x > |w|/2, a prefix of
        #    the sorted group, and only groups whose farthest row passes), then per row
        #    P^T(x - c_j)·P^T w + |rest of x - c_j| |rest of w| (principal coordinates).
        # 2. The prefix of each group above its triangle limit.
        home = group_of[index]
        open_groups = _compiled().open_groups if COMPILED else _open_groups
        groups, prefix, limit, rest_w, half_gap, total = open_groups(
            t, index, home, centres, centre_sq, centre_proj, group_max, start, count, slot_dist, where,
            eps_cross, delta, eta, res_slack,
        )  # fmt: skip
        if COMPILED and total > dense_limit:  # group sizes; is the step dense by its prefixes?
            total = _compiled().prefix_total(groups, limit, start, count, slot_dist)
        groups_examined += len(groups)
        recent[t % _WINDOW] = total

        if total > dense_limit:
            # 3a. Dense step: every row's value in one pass in row order (the plain loop's step).
            dense_steps += 1
            looked += n_rows
            computed += n_rows
            half_sq_distances(work, half_norms, centre, half_norms[index], dots, values)
            values[index] = minus_inf
            movers = np.flatnonzero(values < min_dist)
            mover_values = values[movers]
        else:
            # 3b. Sparse step: rows of the prefixes that no bound rules out get their exact value
            #     (large steps in two halves on two threads: the kernels, numpy and faiss release
            #     the GIL).
            sparse_rows = _compiled_sparse_rows if COMPILED else _sparse_rows
            step_bounds = (groups, prefix, limit, rest_w, half_gap)
            step = (start, slot_row, slot_dist, slot_res, slot_rc, slot_rn, centre_proj[t].astype(f32))
            step += (work, half_norms, index, centre, dots)
            if side_pool is not None and total > _SPLIT_ROWS and len(groups) > 1:
                cut = _half_cut(prefix, total)
                later = side_pool.submit(sparse_rows, *(x[cut:] for x in step_bounds), *step)
                results = [sparse_rows(*(x[:cut] for x in step_bounds), *step), later.result()]
            else:
                results = [sparse_rows(*step_bounds, *step)]
            movers = np.concatenate([r[0] for r in results])
            mover_values = np.concatenate([r[1] for r in results])
            looked += sum(r[2] for r in results)
            computed += sum(r[3] for r in results)
        if not (movers == index).any():
            movers = np.append(movers, index)  # the new centre leaves its group in any case
            mover_values = np.append(mover_values, minus_inf)
        mover_values[movers == index] = minus_inf

        # 4. Movers leave holes; a group whose first slot became a hole starts at its next live
        #    slot. They form the new centre's group, sorted, appended after ``end``.
        min_dist[movers] = mover_values
        mover_slots = where[movers]
        slot_row[mover_slots] = -1
        touched = np.unique(group_of[movers])
        for g in touched[slot_row[start[touched]] < 0]:
            first, stop = int(start[g]), int(start[g] + count[g])
            first = _next_live(slot_row, first, stop)
            start[g], count[g] = first, stop - first
        heads = np.minimum(start[touched], capacity - 1)
        group_max[touched] = np.where(count[touched] > 0, slot_dist[heads], minus_inf)
        group_arg[touched] = slot_row[heads]
        order = np.lexsort((movers, -mover_values))
        movers, mover_values = movers[order], mover_values[order]
        if end + len(movers) > capacity:
            end = _pack(slot_row, (slot_dist, slot_res, slot_rn, slot_rc), where, start, count, t)
        end = new_group(t, movers, mover_values, centre, end)

        if t >= give_up_after and recent.sum() > _GIVE_UP_SHARE * _WINDOW * n_rows:
            _plain_steps(work, half_norms, min_dist, chosen, t + 1, dots)
            plain_from = t + 1
            break

    if side_pool is not None:
        side_pool.shutdown()
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


def _open_groups(
    t, index, home, centres, centre_sq, centre_proj, group_max, start, count, slot_dist, where,
    eps_cross, delta, eta, res_slack,
):  # fmt: skip
    """numpy version of :func:`_open_groups_kernel`: probes and a few bisections bound each
    prefix from above (rows beyond the true prefix are filtered out by their value later)."""
    cross = np.dot(centres[:t], centres[t]).astype(np.float64)
    d2 = centre_sq[:t] + centre_sq[t] - 2.0 * cross
    d2_low = np.maximum(d2 - eps_cross, 0.0)
    keep_below = d2_low / 8.0 - delta  # rows with a value <= this keep it (triangle)
    groups = np.flatnonzero(group_max[:t] > keep_below)
    slot = int(np.searchsorted(groups, home))
    if slot == len(groups) or groups[slot] != home:
        groups = np.insert(groups, slot, home)  # the new centre itself always leaves its group
    pu = centre_proj[t] - centre_proj[groups]  # P^T w per group
    rest_w = np.sqrt(np.maximum(d2[groups] + eps_cross - (pu * pu).sum(axis=1) * (1.0 - 1e-6), 0.0))
    rest_w += res_slack  # >= |rest of w|
    half_gap = d2_low[groups] / 2.0 - 2.0 * delta - eta  # (x - c_j)·w below this: x keeps its value
    sizes, firsts, limit = count[groups], start[groups], keep_below[groups]
    offsets = (sizes[:, None] * _PROBES).astype(np.intp)
    below = slot_dist[firsts[:, None] + offsets] <= limit[:, None]
    first_below = below.argmax(axis=1)
    prefix = np.where(below.any(axis=1), offsets[np.arange(len(groups)), first_below], sizes)
    low = np.where(first_below > 0, offsets[np.arange(len(groups)), first_below - 1] + 1, 1)
    np.minimum(low, prefix, out=low)
    for _ in range(_BISECTIONS):
        middle = (low + prefix) // 2
        drop = slot_dist[firsts + np.minimum(middle, sizes - 1)] <= limit
        prefix = np.where(drop & (middle < prefix), middle, prefix)
        low = np.where(drop, low, np.minimum(middle + 1, prefix))
    prefix[slot] = max(prefix[slot], where[index] - firsts[slot] + 1)
    np.maximum(prefix, 1, out=prefix)
    return groups, prefix, limit, rest_w, half_gap, int(prefix.sum())


def _sparse_rows(
    groups, prefix, limit, rest_w, half_gap, start, slot_row, slot_dist, slot_res, slot_rc, slot_rn, centre_p,
    work, half_norms, index, centre, dots,
):  # fmt: skip
    """Rows of the given group prefixes whose value drops for the new centre, and their values.

    Filters: the triangle limit on the row's current value, then the principal-coordinate bound
    of ``(x - c_j)·w``; the rest get the exact value. Returns (rows, values, looked, computed).
    """
    positions = _ranges(start[groups], prefix)
    current = slot_dist[positions]
    keep = current > np.repeat(limit, prefix)
    rows = slot_row[positions]
    keep &= rows >= 0
    at = positions[keep]
    looked = len(at)
    if not looked:
        return at, current[:0], 0, 0
    rows, current = rows[keep], current[keep]
    # res·P^T w = res·P^T c - res·P^T c_j; the second term was stored with the row
    lhs = np.take(slot_res, at, axis=0) @ centre_p
    lhs -= slot_rc[at]
    lhs += slot_rn[at] * np.repeat(rest_w, prefix)[keep]
    open_rows = lhs > np.repeat(half_gap, prefix)[keep]
    rows, current = rows[open_rows], current[open_rows]
    movers, values = _exact_values(rows, current, work, half_norms, index, centre, dots)
    return movers, values, looked, len(rows)


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
            half_sq_distances(work, half_norms, work[index], half_norms[index], dots, buffer)
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
    slot_data: tuple[np.ndarray, ...],
    where: np.ndarray,
    start: np.ndarray,
    count: np.ndarray,
    t: int,
) -> int:
    """Move the live slots of groups ``0..t-1`` to the front, in group order; return the new end."""
    sizes = count[:t]
    positions = _ranges(start[:t], sizes)
    live = slot_row[positions] >= 0
    group = np.repeat(np.arange(t), sizes)[live]
    positions = positions[live]
    kept = np.bincount(group, minlength=t)
    rows = slot_row[positions]
    for array in slot_data:
        array[: len(rows)] = array[positions]
    slot_row[: len(rows)] = rows
    where[rows] = np.arange(len(rows))
    start[:t] = np.cumsum(kept) - kept
    count[:t] = kept
    return len(rows)
