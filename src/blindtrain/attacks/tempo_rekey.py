"""Key epochs of one layer linked to each other: how W′ under an old key maps onto W′ under the new one.

* **Worker-side SGD** (rotation every R steps): the enclave fetches W′, decodes it and re-sends it under a
  fresh key; the worker's own copy (replayed, exact) and the new W′ hold the same floats — a mantissa link.
* **Enclave-side updates** (Adam ...): W′ is re-sent every step *after* the enclave's update, so the floats
  change.  But the worker computed every gradient ``G₂ᵀX′`` itself (in the key of its step), and Adam is
  elementwise: with the key's row scales c known, its update in key coordinates is
  ``Δ′ = c · lr · m̂′ / (√v̂′ + c ε)`` (m′, v′ the moments of the key-coordinate gradients, which are the true
  ones times ``c s`` and ``c²``).  The worker predicts the next weights ``W′ − Δ′``, and matches them to the
  re-sent W′ (row profiles up to a power of two, then columns up to sign).  The first key's c is found the
  same way, trying every power of two tempo draws per row.

A :class:`Rekey` maps old rows/columns to new ones: ``new[rows[i], cols[j]] = old[i, j] · scale[i] · sign[j]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from .tempo_links import consistent, link


@dataclass
class Rekey:
    rows: np.ndarray
    scale: np.ndarray
    cols: np.ndarray
    sign: np.ndarray


def _exact(before: np.ndarray, after: np.ndarray) -> Rekey | None:
    lk = link(before, after)
    m, n = before.shape[:2]
    if (lk.row_votes < 0.5).any() or (lk.col_votes < 0.5).any():
        return None
    if len(set(lk.row_map.tolist())) != m or len(set(lk.col_map.tolist())) != n:
        return None
    ok = consistent(lk)
    mag = np.zeros(m)
    np.maximum.at(mag, lk.p_rows[ok], np.abs(lk.ratio[ok]))
    sg = np.zeros(n)
    np.add.at(sg, lk.p_cols[ok], np.sign(lk.ratio[ok]))
    return Rekey(lk.row_map.copy(), mag, lk.col_map.copy(), np.where(sg < 0, -1.0, 1.0))


def _profiles(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(w.reshape(w.shape[0], -1))
    top = a.max(1)
    return np.sort(a, axis=1) / np.where(top > 0, top, 1.0)[:, None], top


def _approximate(pred: np.ndarray, after: np.ndarray, *, tol: float = 1e-3) -> Rekey | None:
    """Rows of ``pred`` (predicted weights, old key) ↔ rows of ``after`` (new key) by scale-free row profiles,
    then columns up to sign; None unless the mapped prediction matches ``after`` to relative ``tol``."""
    m, n = pred.shape[:2]
    pp, ptop = _profiles(pred)
    ap, atop = _profiles(after)
    rows_old, rows_new = linear_sum_assignment(cdist(pp, ap, "cityblock"))
    rows = np.empty(m, np.int64)
    rows[rows_old] = rows_new
    scale = np.exp2(np.round(np.log2(np.maximum(atop[rows], 1e-30) / np.maximum(ptop, 1e-30))))
    moved = np.empty_like(pred, dtype=np.float64)
    moved[rows] = pred * scale.reshape(-1, *([1] * (pred.ndim - 1)))
    a_cols = np.abs(np.moveaxis(moved, 1, 0).reshape(n, -1))
    b_cols = np.abs(np.moveaxis(after.astype(np.float64), 1, 0).reshape(n, -1))
    cols_old, cols_new = linear_sum_assignment(cdist(a_cols, b_cols, "cityblock"))
    cols = np.empty(n, np.int64)
    cols[cols_old] = cols_new
    after_cols = np.moveaxis(after.astype(np.float64), 1, 0)[cols].reshape(n, -1)
    dot = (np.moveaxis(moved, 1, 0).reshape(n, -1) * after_cols).sum(1)
    sign = np.where(dot < 0, -1.0, 1.0)
    mapped = np.empty_like(moved)
    mapped[:, cols] = moved * sign.reshape(1, -1, *([1] * (pred.ndim - 2)))
    err = np.abs(mapped - after).max() / max(np.abs(after).max(), 1e-30)
    if not np.isfinite(err) or err > tol:
        return None
    return Rekey(rows, scale, cols, sign)


def _adam_predict(w, m1, m2, c, step, hyper):
    """``W′ − Δ′`` (see the module docstring), float64; c: (m,) row scales."""
    lr = float(hyper["lr"])
    beta1, beta2 = (hyper.get("betas") or (0.9, 0.999))
    eps = float(hyper.get("eps", 1e-8))
    shape = (-1,) + (1,) * (w.ndim - 1)
    m_hat = m1 / (1 - beta1 ** step)
    v_hat = m2 / (1 - beta2 ** step)
    return w - c.reshape(shape) * lr * m_hat / (np.sqrt(v_hat) + c.reshape(shape) * eps)


class Rekeys(dict):
    """``(layer, step) -> Rekey`` for every step at which a layer got a new key after its first, absent where
    no link was found; under enclave-side Adam also ``scales[(layer, step)]``: the absolute row scales c of
    the key in force at that training step, and ``final[layer] = (step, W′)``: the weights after the last
    update, in the key of ``step`` (the last key; predicted if no key followed the last update)."""

    def __init__(self) -> None:
        super().__init__()
        self.scales: dict[tuple[str, int], np.ndarray] = {}
        self.final: dict[str, tuple[int, np.ndarray]] = {}


def rekey_links(view, hyper: dict, scale_range: int, notes: list[str]) -> Rekeys:
    """The re-key links of every layer (see the module docstring and :class:`Rekeys`)."""
    out = Rekeys()
    steps = sorted(view.steps)
    adam = not view.resident and str(hyper.get("optimizer", "")).lower() == "adam"
    beta1, beta2 = (hyper.get("betas") or (0.9, 0.999))
    wd = float(hyper.get("weight_decay", 0.0) or 0.0)
    failed = 0
    for name in view.layers:
        w = m1 = m2 = c = known = None
        count, key_step, updated = 0, None, False
        for step in steps:
            ls = view.steps[step].get(name)
            if ls is None:
                continue
            if ls.encrypted is not None and w is not None:
                after = ls.encrypted.astype(np.float64)
                rk = _exact(ls.weight_before, ls.encrypted) if ls.weight_before is not None else None
                if rk is None and adam and m1 is not None:
                    if c is None:
                        c, known = np.ones(w.shape[0]), np.zeros(w.shape[0], bool)
                    # rows whose scale no update has shown yet: try each power of two tempo draws
                    c = _row_scales(w, m1, m2, c, known, count, hyper, after, scale_range)
                    out.scales[(name, key_step)] = c.copy()
                    rk = _approximate(_adam_predict(w, m1, m2, c, count, hyper), after)
                    if rk is not None:
                        known = known | (np.abs(m1.reshape(len(m1), -1)).max(1) > 0)
                if rk is None:
                    failed += 1
                    w = m1 = m2 = c = known = None
                else:
                    out[(name, step)] = rk
                    if m1 is not None:
                        m1, m2 = _move(m1, rk, 1), _move(m2, rk, 2)
                    if c is not None:
                        c_new, known_new = np.empty_like(c), np.empty_like(known)
                        c_new[rk.rows], known_new[rk.rows] = c * rk.scale, known
                        c, known = c_new, known_new
            if ls.encrypted is not None:
                w = ls.encrypted.astype(np.float64)
                key_step, updated = step, False
            if adam and ls.weight_grad is not None and w is not None:
                if c is not None:
                    out.scales[(name, step)] = c.copy()
                updated = True
                g = ls.weight_grad.astype(np.float64) + wd * w
                count += 1
                m1 = (1 - beta1) * g if m1 is None else beta1 * m1 + (1 - beta1) * g
                m2 = (1 - beta2) * g * g if m2 is None else beta2 * m2 + (1 - beta2) * g * g
        if adam and w is not None and c is not None:
            out.final[name] = (key_step, _adam_predict(w, m1, m2, c, count, hyper) if updated else w)
    if failed:
        notes.append(f"key epochs: {failed} re-keying(s) could not be linked")
    return out


def _move(state: np.ndarray, rk: Rekey, power: int) -> np.ndarray:
    shape = (-1,) + (1,) * (state.ndim - 1)
    moved = np.empty_like(state)
    moved[rk.rows] = state * (rk.scale ** power).reshape(shape)
    out = np.empty_like(moved)
    out[:, rk.cols] = moved * (rk.sign.reshape(1, -1, *([1] * (state.ndim - 2))) ** power)
    return out


def _row_scales(w, m1, m2, c, known, step, hyper, after, scale_range):
    """``c`` with each row not yet ``known`` set to the power of two whose predicted row best matches a row
    of ``after`` (rows without any update so far match under every candidate: they stay unknown)."""
    moving = np.abs(m1.reshape(len(m1), -1)).max(1) > 0
    search = ~known & moving  # a row no update has moved yet matches under every candidate
    if not search.any():
        return c
    ap, _ = _profiles(after)
    best_d = np.full(len(c), np.inf)
    out = c.copy()
    for e in range(-scale_range, scale_range + 1):
        ce = np.where(search, 2.0 ** e, c)
        pp, _ = _profiles(_adam_predict(w[search], m1[search], m2[search], ce[search], step, hyper))
        d = cdist(pp, ap, "cityblock").min(1)
        idx = np.flatnonzero(search)
        better = d < best_d[idx]
        best_d[idx[better]] = d[better]
        out[idx[better]] = 2.0 ** e
    return out
