"""Linking two tensors that hold the same floats up to permutations, signs and power-of-two scales.

tempo's keys are permutations, ±1 signs and powers of two: exact float operations, so a value keeps its
23-bit mantissa through them.  When the same values reach the worker twice (its own product, decoded
and re-encoded by the enclave in the next operand; a weight re-sent under a fresh key), equal mantissas
say which entry of one tensor is which entry of the other.

A tensor here is ``rows × cols × rest`` (rest: trailing spatial dims, flattened into entries).  A link
votes, over all entries whose mantissa occurs exactly once in each tensor, for the row and the column
of the other tensor each row and column goes with, and reads the exact ratio ``P[i, j] / Q[i', j']``
(a signed power of two) of every matched entry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MANTISSA = 0x7FFFFF


def mantissas(array: np.ndarray) -> np.ndarray:
    """The 23 mantissa bits of each float32 entry (sign and exponent dropped)."""
    return np.ascontiguousarray(array, dtype=np.float32).view(np.int32) & MANTISSA


def _unique_keys(keys: np.ndarray) -> np.ndarray:
    """Indices of the entries whose key occurs exactly once."""
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    return first[counts == 1]


@dataclass
class Link:
    """Entry matches of ``P`` (rows × cols × rest) into ``Q``, and the row / column maps they vote for.

    ``row_map[i]``: the row of Q row i of P goes with (−1: no vote); ``row_votes[i]``: the winning vote's
    share of row i's matches.  ``col_map``, ``col_votes`` likewise.  ``p_index``/``q_index``: matched
    flat entries; ``ratio``: ``P / Q`` at each match (a signed power of two when the link is real)."""

    row_map: np.ndarray
    row_votes: np.ndarray
    col_map: np.ndarray
    col_votes: np.ndarray
    p_rows: np.ndarray
    p_cols: np.ndarray
    q_rows: np.ndarray
    q_cols: np.ndarray
    ratio: np.ndarray

    @property
    def matches(self) -> int:
        return len(self.ratio)


def _vote(src: np.ndarray, dst: np.ndarray, n_src: int, n_dst: int) -> tuple[np.ndarray, np.ndarray]:
    mapping = np.full(n_src, -1, dtype=np.int64)
    share = np.zeros(n_src)
    if len(src) == 0:
        return mapping, share
    counts = np.zeros((n_src, n_dst), dtype=np.int64)
    np.add.at(counts, (src, dst), 1)
    total = counts.sum(1)
    best = counts.argmax(1)
    has = total > 0
    mapping[has] = best[has]
    share[has] = counts[has, best[has]] / total[has]
    return mapping, share


def link(p: np.ndarray, q: np.ndarray, *, min_abs: float = 0.0) -> Link:
    """Match the nonzero entries of ``p`` and ``q`` by mantissa (see the module docstring).

    Entries whose mantissa is zero (powers of two: ambiguous) and repeated mantissas are left out."""
    p3 = np.asarray(p, dtype=np.float32).reshape(p.shape[0], p.shape[1], -1)
    q3 = np.asarray(q, dtype=np.float32).reshape(q.shape[0], q.shape[1], -1)
    pf, qf = p3.ravel(), q3.ravel()
    pk, qk = mantissas(pf), mantissas(qf)
    p_ok = np.flatnonzero((np.abs(pf) > min_abs) & (pk != 0))
    q_ok = np.flatnonzero((np.abs(qf) > min_abs) & (qk != 0))
    p_ok = p_ok[_unique_keys(pk[p_ok])]
    q_ok = q_ok[_unique_keys(qk[q_ok])]
    q_sorted = q_ok[np.argsort(qk[q_ok], kind="stable")]
    q_keys = qk[q_sorted]
    pos = np.searchsorted(q_keys, pk[p_ok])
    pos = np.minimum(pos, len(q_keys) - 1) if len(q_keys) else pos
    hit = (q_keys[pos] == pk[p_ok]) if len(q_keys) else np.zeros(len(p_ok), bool)
    pi, qi = p_ok[hit], q_sorted[pos[hit]]
    p_rows, p_rest = np.divmod(pi, p3.shape[1] * p3.shape[2])
    p_cols = p_rest // p3.shape[2]
    q_rows, q_rest = np.divmod(qi, q3.shape[1] * q3.shape[2])
    q_cols = q_rest // q3.shape[2]
    row_map, row_votes = _vote(p_rows, q_rows, p3.shape[0], q3.shape[0])
    col_map, col_votes = _vote(p_cols, q_cols, p3.shape[1], q3.shape[1])
    ratio = pf[pi].astype(np.float64) / qf[qi].astype(np.float64)
    return Link(row_map, row_votes, col_map, col_votes, p_rows, p_cols, q_rows, q_cols, ratio)


def consistent(lk: Link) -> np.ndarray:
    """Mask of the matches that agree with the voted row and column maps."""
    return (lk.row_map[lk.p_rows] == lk.q_rows) & (lk.col_map[lk.p_cols] == lk.q_cols)


def rank_one_log2(lk: Link, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the matched ratios ``|P/Q| = 2^(r_i + k_j)`` into row and column exponents (one gauge:
    the first connected row gets 0) and the signs ``sign(P/Q) = σ_i τ_j`` likewise.

    Returns ``(row_exp, col_exp, row_sign, col_sign)``; NaN / 0 where a row or column has no match.
    Solved by propagation over the bipartite graph of matches (consistent ones only)."""
    ok = consistent(lk)
    rows, cols, ratio = lk.p_rows[ok], lk.p_cols[ok], lk.ratio[ok]
    exp = np.round(np.log2(np.abs(ratio))).astype(np.int64)
    sgn = np.sign(ratio).astype(np.int64)
    row_exp = np.full(n_rows, np.nan)
    col_exp = np.full(n_cols, np.nan)
    row_sign = np.zeros(n_rows, np.int64)
    col_sign = np.zeros(n_cols, np.int64)
    if len(rows) == 0:
        return row_exp, col_exp, row_sign, col_sign
    # one representative match per (row, col) pair is enough; propagate breadth-first
    pairs = {}
    for r, c, e, s in zip(rows.tolist(), cols.tolist(), exp.tolist(), sgn.tolist()):
        pairs.setdefault((r, c), (e, s))
    by_row: dict[int, list] = {}
    by_col: dict[int, list] = {}
    for (r, c), (e, s) in pairs.items():
        by_row.setdefault(r, []).append((c, e, s))
        by_col.setdefault(c, []).append((r, e, s))
    for start in by_row:
        if not np.isnan(row_exp[start]):
            continue
        row_exp[start], row_sign[start] = 0, 1
        frontier = [("r", start)]
        while frontier:
            kind, idx = frontier.pop()
            if kind == "r":
                for c, e, s in by_row[idx]:
                    if np.isnan(col_exp[c]):
                        col_exp[c], col_sign[c] = e - row_exp[idx], s * row_sign[idx]
                        frontier.append(("c", c))
            else:
                for r, e, s in by_col[idx]:
                    if np.isnan(row_exp[r]):
                        row_exp[r], row_sign[r] = e - col_exp[idx], s * col_sign[idx]
                        frontier.append(("r", r))
    return row_exp, col_exp, row_sign, col_sign
