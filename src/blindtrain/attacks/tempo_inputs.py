"""Input reconstruction against tempo's first layer.

The first layer's operand is ``X′ = (c_b X s)[π_b][:, π_n]``: each row a training sample times a power of
two, each column an input feature times a sign, the features in a secret order fixed for the key epoch.

1. **Row scales.** The data's values form a small known set (digits: 17 grey levels after
   standardisation, read off the public split).  ``c_b`` is the power of two that puts a row's ``|X′|`` into
   that set.
2. **One column frame for all epochs.** A key rotation re-sends the weights the worker holds; matching
   mantissas of the old W′ (the worker's own, updated copy) and the new one gives how each input column
   moved and whether its sign flipped (:func:`~blindtrain.attacks.tempo_links.link`).
3. **Signs.** A column's sign is the one that puts its values in the public value set (the set is not
   symmetric about 0).
4. **Feature order.** The frame's columns are assigned to feature positions by matching per-feature value
   histograms and then pairwise co-occurrence statistics against the public split (a linear assignment,
   then a swap search on the quadratic agreement).  Positions the public split almost never lights up
   (image borders) carry no public statistics: their columns are placed by an image prior instead (a pixel
   lights up with its neighbours, counted in the recovered training rows).

Conv first layers keep the spatial layout, so only channels are permuted: the same steps apply with a
channel per column (single-channel images need no assignment at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class InputAttack:
    """What the input attack found: per step the reconstruction (frame rows), the row exponents
    (``c_b = 2^e``), and per first-layer column its feature position and sign (``x = sign · x′ / c_b``)."""

    inputs: dict[int, np.ndarray] = field(default_factory=dict)
    row_exp: dict[int, np.ndarray] = field(default_factory=dict)
    feature: dict[int, np.ndarray] = field(default_factory=dict)   #: step -> (n,) feature (channel) index
    sign: dict[int, np.ndarray] = field(default_factory=dict)      #: step -> (n,) ±1


def value_set(public_x: np.ndarray) -> np.ndarray:
    """The sorted distinct values of the public inputs (float32), or an empty array if they are not few."""
    values = np.unique(np.asarray(public_x, dtype=np.float32))
    return values if len(values) <= 4096 else np.empty(0, np.float32)


def row_exponents(x: np.ndarray, values: np.ndarray, *, span: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x`` (b×n...), the exponent e maximising the fraction of ``|x| / 2^e`` in ``|values|``.

    Returns ``(e, fraction)``.  Rows are samples times ``c_b = 2^e`` (and signs per column)."""
    flat = np.abs(np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1))
    mags = np.unique(np.abs(values))
    mags = mags[mags > 0]
    best_e = np.zeros(len(flat), np.int64)
    best_f = np.full(len(flat), -1.0)
    if len(mags) == 0:
        return best_e, np.zeros(len(flat))
    nonzero = flat > 0
    # exponents to try: those that map some entry onto some value
    cand = np.unique(np.round(np.log2(flat[nonzero].reshape(-1)[:4096, None] / mags[None, :])).astype(np.int64))
    cand = cand[np.abs(cand) <= span]
    for e in cand:
        scaled = (flat * np.float32(2.0 ** -int(e))).astype(np.float32)
        frac = (np.isin(scaled, mags) | ~nonzero).mean(1)
        better = frac > best_f
        best_e[better], best_f[better] = e, frac[better]
    return best_e, best_f


def column_signs(z: np.ndarray, values: np.ndarray) -> np.ndarray:
    """±1 per column of ``z`` (N×n, rows already unscaled): the sign that puts more entries in ``values``."""
    pos = np.isin(z, values).sum(0)
    neg = np.isin(-z, values).sum(0)
    return np.where(neg > pos, -1.0, 1.0)


def _histograms(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per column of ``x`` (N×n): the fraction of its entries equal to each value (n × len(values))."""
    index = np.searchsorted(values, x)
    index = np.clip(index, 0, len(values) - 1)
    exact = values[index] == x
    n_cols = x.shape[1]
    out = np.zeros((n_cols, len(values) + 1))
    col = np.broadcast_to(np.arange(n_cols), x.shape)
    np.add.at(out, (col[exact], index[exact]), 1)
    np.add.at(out, (col[~exact], len(values)), 1)
    return out / max(len(x), 1)


def assign_columns(z: np.ndarray, public: np.ndarray, values: np.ndarray, *, sweeps: int = 6) -> np.ndarray:
    """The feature position of each frame column: ``order[j]`` = public column matching column j of ``z``.

    ``z``: N×n recovered rows (unscaled, signs fixed, columns in the frame order); ``public``: M×n.
    A linear assignment on value histograms, refined by swaps that raise the agreement of the columns'
    co-occurrence matrices (a quadratic-assignment local search)."""
    n = z.shape[1]
    hz, hp = _histograms(z, values), _histograms(public, values)
    cost = np.abs(hz[:, None, :] - hp[None, :, :]).sum(-1)
    _, order = linear_sum_assignment(cost)
    # second moments (centred) of both, then swaps improving Σ_jk Cz[j,k] Cp[o_j, o_k] − λ·histogram cost
    def centred_cov(a):
        a = a - a.mean(0)
        cov = a.T @ a / max(len(a) - 1, 1)
        d = np.sqrt(np.clip(np.diag(cov), 1e-12, None))
        return cov / d[:, None] / d[None, :] * (d[:, None] > 1e-6) * (d[None, :] > 1e-6)

    cz, cp = centred_cov(z.astype(np.float64)), centred_cov(public.astype(np.float64))
    np.fill_diagonal(cz, 0.0)
    np.fill_diagonal(cp, 0.0)
    weight = 1.0

    def gain_matrix(order):
        """Change of the objective when the targets of columns a and b are swapped (all pairs at once):
        2·(M[a,b] + M[b,a] − base[a] − base[b] + 2·Cz[a,b]·P[a,b]), with P = Cp in frame order,
        M = Cz·P and base[j] = Σ_k Cz[j,k]·P[j,k]; minus the change of the histogram cost."""
        p = cp[order][:, order]
        m = cz @ p
        base = (cz * p).sum(1)
        gain = 2 * (m + m.T - base[:, None] - base[None, :] + 2 * cz * p)
        hcost = cost[np.arange(n), order]
        hcost_sw = cost[np.arange(n)[:, None], order[None, :]]
        gain -= weight * (hcost_sw + hcost_sw.T - hcost[:, None] - hcost[None, :])
        np.fill_diagonal(gain, 0.0)
        return gain

    for _ in range(sweeps * n):
        gain = gain_matrix(order)
        j, k = np.unravel_index(np.argmax(gain), gain.shape)
        if gain[j, k] <= 1e-9:
            break
        order[j], order[k] = order[k], order[j]
    return order


def _grid_neighbours(shape: tuple[int, ...]) -> list[np.ndarray] | None:
    """For a C×H×W input flattened channel-major, each position's 8-neighbours in its channel's grid."""
    if len(shape) != 3:
        return None
    c, h, w = shape
    out = []
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                near = [ch * h * w + yy * w + xx for yy in range(max(y - 1, 0), min(y + 2, h))
                        for xx in range(max(x - 1, 0), min(x + 2, w)) if (yy, xx) != (y, x)]
                out.append(np.array(near))
    return out


def place_rare_columns(z: np.ndarray, public: np.ndarray, order: np.ndarray, shape, *, rare: int = 2) -> np.ndarray:
    """Re-place the columns assigned to *rare* positions (at most ``rare`` public samples off the background)
    by the image prior: a position's column lights up with its grid neighbours.  Each such column goes where
    its co-occurrence with the columns already placed at the neighbours, in the recovered rows, is highest."""
    neighbours = _grid_neighbours(tuple(shape))
    if neighbours is None or len(neighbours) != z.shape[1]:
        return order
    background = np.bincount(np.unique(z, return_inverse=True)[1].ravel()).argmax()
    bg_value = np.unique(z)[background]
    pub_bg = np.unique(public, return_counts=True)
    pub_bg = pub_bg[0][pub_bg[1].argmax()]
    weak_pos = np.flatnonzero((public != pub_bg).sum(0) <= rare)
    if len(weak_pos) < 2:
        return order
    on = (z != bg_value).astype(np.float64)
    co = on.T @ on
    count = np.diag(co).copy()
    position_of = np.empty_like(order)
    position_of[:] = order
    column_at = np.empty_like(order)
    column_at[order] = np.arange(len(order))
    cols = column_at[weak_pos]
    weak = set(weak_pos.tolist())
    score = np.zeros((len(cols), len(weak_pos)))
    for b, p in enumerate(weak_pos):
        strong = [q for q in neighbours[p] if q not in weak]
        if strong:
            score[:, b] = co[np.ix_(cols, column_at[strong])].sum(1) / np.maximum(count[cols], 1)
    if not score.any():
        return order
    rows, targets = linear_sum_assignment(-score)
    out = order.copy()
    out[cols[rows]] = weak_pos[targets]
    return out


def _epoch_frames(view, steps: list[int], layer: str, notes: list[str], rekeys: dict) -> dict:
    """step -> (group, ref_col, flip): column j of the step's operand is column ``ref_col[j]`` of its group's
    reference frame, times ``flip[j]``.  Key epochs chained by re-key links (:mod:`.tempo_rekey`) share a
    group."""
    out = {}
    group, ref_col, flip = -1, None, None
    linked = broken = 0
    for step in steps:
        ls = view.steps[step].get(layer)
        if ls is None or not ls.forwards:
            continue
        if ls.encrypted is not None or ref_col is None:
            n = ls.forwards[0].shape[1]
            rk = rekeys.get((layer, step))
            if ref_col is not None and rk is not None:
                new_ref, new_flip = np.empty(n, np.int64), np.empty(n)
                new_ref[rk.cols] = ref_col
                new_flip[rk.cols] = flip * rk.sign
                ref_col, flip = new_ref, new_flip
                linked += 1
            else:
                if ref_col is not None:
                    broken += 1
                group += 1
                ref_col, flip = np.arange(n), np.ones(n)
        out[step] = (group, ref_col.copy(), flip.copy())
    notes.append(f"inputs: {linked} key change(s) of the first layer linked, {broken} not "
                 f"({group + 1} separate column frame(s))")
    return out


def recover_inputs(view, steps: list[int], knowledge, notes: list[str], rekeys: dict) -> InputAttack:
    """Reconstructed training inputs per step, rows in the frame order (see the module docstring)."""
    layer = view.layers[0]
    conv = view.conv.get(layer, False)
    shape = tuple(knowledge.input_shape)
    public = np.asarray(knowledge.public_x, dtype=np.float32)
    values = value_set(public)
    frames = _epoch_frames(view, steps, layer, notes, rekeys)
    result = InputAttack()
    # unscale every row
    unscaled, fractions = {}, []
    for step, (group, _, _) in frames.items():
        x = np.asarray(view.steps[step][layer].forwards[0], dtype=np.float32)
        if len(values):
            e, frac = row_exponents(x, values)
            fractions.append(frac)
        else:  # continuous data: the power of two that brings the row's RMS nearest the public RMS
            rms = np.sqrt((x.reshape(len(x), -1).astype(np.float64) ** 2).mean(1)) + 1e-30
            target = np.sqrt((public.astype(np.float64) ** 2).mean())
            e = np.round(np.log2(rms / target)).astype(np.int64)
        result.row_exp[step] = e
        unscaled[step] = (x * np.float32(2.0) ** (-e.astype(np.float32)).reshape(-1, *([1] * (x.ndim - 1))))
    if fractions:
        frac = np.concatenate(fractions)
        notes.append(f"inputs: row scales from the public value set ({len(values)} values): "
                     f"{(frac == 1).mean():.3f} of rows fully in the set")
    out = result.inputs
    groups = sorted({g for g, _, _ in frames.values()})
    # public data in the operand's column layout: features (linear) or channels (conv)
    pub_cols = public.reshape(len(public), -1) if not conv else public
    for g in groups:
        members = [s for s, (gg, _, _) in frames.items() if gg == g]
        ref = []
        for s in members:
            _, ref_col, flip = frames[s]
            z = unscaled[s] * flip.reshape(1, -1, *([1] * (unscaled[s].ndim - 2))).astype(np.float32)
            zr = np.empty_like(z)
            zr[:, ref_col] = z
            ref.append(zr)
        zall = np.concatenate(ref)
        if conv:  # channels are columns; spatial layout kept
            c = zall.shape[1]
            zc = np.moveaxis(zall, 1, -1).reshape(-1, c)
            pc = np.moveaxis(pub_cols, 1, -1).reshape(-1, c)
        else:
            zc, pc = zall.reshape(len(zall), -1), pub_cols
        signs = column_signs(zc, values) if len(values) else np.sign(np.sign(zc.mean(0) * pc.mean(0)) + 0.5)
        zc = zc * signs
        order = np.arange(zc.shape[1]) if zc.shape[1] == 1 else \
            assign_columns(zc, pc, values if len(values) else np.unique(np.round(pc, 1)))
        if not conv:
            order = place_rare_columns(zc, pc, order, shape)
        for s, zr in zip(members, ref):
            placed = np.empty_like(zr)
            sgn = signs.reshape(1, -1, *([1] * (zr.ndim - 2))).astype(np.float32)
            placed[:, order] = zr * sgn
            out[s] = placed.reshape(len(placed), *shape)
            _, ref_col, flip = frames[s]
            result.feature[s] = order[ref_col]
            result.sign[s] = signs[ref_col] * flip
    notes.append("inputs: columns put in feature order by matching value histograms and co-occurrence "
                 f"statistics of the recovered rows against the public split ({len(public)} samples)")
    return result
