"""Model theft against tempo (MLP of Linear layers with ReLU between them, cross-entropy loss).

The worker holds every W′ᵏ = ``(cᵏ Wᵏ sᵏ)[π_m][:, π_n]`` and, under SGD, updates it itself, so the replayed
view (:mod:`.tempo_view`) has the final W′ exactly.  What decodes it, per training step (all links are
mantissa links, :mod:`.tempo_links`):

* ``cᵏ`` (k ≥ 1): the public column factor ``(c²)[π_m]`` that turns G₁ into G₂.
* ``sᵏ`` and the hidden-unit correspondence (layer k's columns ↔ layer k−1's rows): the link
  ``Rᵏ = G₁ᵏW′ᵏ`` ↔ layer k−1's gradient operand; the matched ratios are
  ``(c′_bᵏ / c′_bᵏ⁻¹)_i · (sᵏ cᵏ⁻¹)_j`` (k ≥ 2) or ``(c′_b¹ c_b⁰)_i · (s¹ / c⁰)_j`` (k = 1): signs give sᵏ,
  magnitudes the batch scales c′_b (and with the public ``1/(c_b c′_b)``, c_b) down the chain.
* ``c⁰`` (the first layer's output scales, exposed by no public factor): the ratios above fix it up to one
  power of two γ, and the forward relation ``X′¹ s¹ / c_b¹ = Y′⁰ / (c_b⁰ c⁰) + b⁰`` (on ReLU-positive
  entries, Y′⁰ = X′⁰W′⁰ᵀ being the worker's own product) fixes γ: its slope is 4^−γ.
* biases: ``b = H − Y`` from the same forward relation (median over positive entries); with fused activations
  the obfuscated bias ``(c b)[π_m]`` crosses as such; the last layer's from the softmax:
  ``log(b·dY + onehot) − Y = b + const`` per row.  The final biases are the last step's, advanced by one
  SGD update from the bias gradients (column sums of the recovered dY) and the previous step's biases.
* the first layer's columns → input features and signs: the input attack (:mod:`.tempo_inputs`); the last
  layer's rows → true classes: the label attack's class resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .tempo_links import consistent, link, rank_one_log2


@dataclass
class StepSolution:
    c: list            #: per layer: output scales (m,) in the step's key order
    s: list            #: per layer: input signs (n,)
    cols: list         #: per layer k ≥ 1: (n,) the layer k−1 output unit of each input column, −1 unknown
    bias: list         #: per layer: (m,) true bias in the step's key order, NaN where unknown
    grad_bias: list    #: per layer: (m,) bias gradient Σ_rows dY


def _gop(ls):
    return ls.g1 if ls.g1 is not None else ls.g2


def _pow2_round(x):
    return np.exp2(np.round(np.log2(x)))


def _public_factors(ls, scales):
    """The rank-one factor ``(rows, cols)`` that turns G₁ into G₂: sent in the clear with worker-side SGD; with
    enclave-side updates G₁ and G₂ both cross, and their quotient is that factor — split by the key's row
    scales c (``cols = c²``) known from the re-key tracker."""
    if ls.rows is not None and ls.cols is not None:
        return ls.rows.astype(np.float64), ls.cols.astype(np.float64)
    if scales is None or ls.g1 is None or ls.g2 is None:
        return None, None
    cols = scales.astype(np.float64) ** 2
    g1, g2 = ls.g1.astype(np.float64), ls.g2.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(g1 != 0, g2 / g1, np.nan) / cols[None, :]
    rows = np.exp2(np.round(np.nanmedian(np.log2(np.abs(q)), axis=1)))
    return rows, cols


def solve_step(view, step: int, found, rekeys=None, *, biases: bool = True) -> StepSolution | None:
    """Every scale, sign, hidden-unit link and bias of one training step (see the module docstring);
    ``biases=False``: the bias gradients only (the biases are NaN)."""
    names = view.layers
    K = len(names)
    st = view.steps[step]
    if any(n not in st or not st[n].training for n in names):
        return None
    ls = [st[n] for n in names]
    scales = getattr(rekeys, "scales", {}) if rekeys is not None else {}
    factors = [(None, None)] + [_public_factors(l, scales.get((n, step))) for n, l in zip(names[1:], ls[1:])]
    if any(f[0] is None or l.grad_input is None for f, l in zip(factors[1:], ls[1:])):
        return None  # needs the rank-one factor G₁ → G₂
    if any(not (np.all(f[1] > 0) and np.all(np.isfinite(f[0])) and np.all(f[0] > 0)) for f in factors[1:]):
        return None  # not tempo's powers of two
    fused = [l.bias is not None for l in ls]
    x0 = ls[0].forwards[0]
    b = x0.shape[0]
    cb = [np.ones(b) for _ in range(K)]
    cpb = [None] * K
    c = [None] * K
    s = [None] * K
    cols = [None] * K
    links = [None] * K
    if not fused[0]:
        cb[0] = np.exp2(found.row_exp[step].astype(np.float64))
    s[0] = found.sign.get(step)
    for k in range(1, K):
        c[k] = np.sqrt(factors[k][1])
        links[k] = link(ls[k].grad_input, _gop(ls[k - 1]))
        lk = links[k]
        ok = consistent(lk)
        n_k = ls[k].grad_input.shape[1]
        votes = np.zeros(n_k)
        np.add.at(votes, lk.p_cols[ok], np.sign(lk.ratio[ok]))
        s[k] = np.where(votes < 0, -1.0, 1.0)
        cols[k] = np.where(lk.col_votes >= 0.5, lk.col_map, -1)
    # k = 1: the rank-one split of the ratios, then γ
    lk = links[1]
    n1, m0 = ls[1].grad_input.shape[1], _gop(ls[0]).shape[1]
    row_exp, col_exp, _, _ = rank_one_log2(lk, b, n1)
    rows1 = np.where(lk.row_votes >= 0.5, lk.row_map, -1)
    k1 = factors[1][0]
    have = (rows1 >= 0) & ~np.isnan(row_exp)
    if fused[1]:
        gamma = np.median(np.log2(1.0 / k1[have]) + np.log2(cb[0][rows1[have]]) - row_exp[have])
    else:
        gamma = _gamma_from_forward(ls, s, cb, k1, row_exp, col_exp, rows1, cols[1])
    if gamma is None:
        return None
    gamma = float(np.round(gamma))
    cpb[1] = np.full(b, np.nan)
    cpb[1][have] = np.exp2(row_exp[have] + gamma) / cb[0][rows1[have]]
    c[0] = np.full(m0, np.nan)
    okc = (cols[1] >= 0) & ~np.isnan(col_exp)
    c[0][cols[1][okc]] = np.exp2(gamma - col_exp[okc])
    cb[1] = np.ones(b) if fused[1] else 1.0 / (k1 * cpb[1])
    for k in range(2, K):
        lk = links[k]
        ok = consistent(lk)
        i, ip, jp = lk.p_rows[ok], lk.q_rows[ok], lk.q_cols[ok]
        est = np.log2(np.abs(lk.ratio[ok]) * cpb[k - 1][ip] / c[k - 1][jp])
        cpb[k] = np.full(b, np.nan)
        sums = np.zeros(b)
        cnt = np.zeros(b)
        good = np.isfinite(est)
        np.add.at(sums, i[good], est[good])
        np.add.at(cnt, i[good], 1)
        has = cnt > 0
        cpb[k][has] = np.exp2(np.round(sums[has] / cnt[has]))
        cb[k] = np.ones(b) if fused[k] else 1.0 / (factors[k][0] * cpb[k])
    bias = [None] * K
    grad_bias = [None] * K
    for k in range(K - 1):
        if not biases:
            bias[k] = np.full(len(c[k]), np.nan)
        elif fused[k]:
            bias[k] = ls[k].bias.reshape(-1).astype(np.float64) / c[k]
        else:
            bias[k] = _hidden_bias(ls, k, s, cb, c, links[k + 1])
    bias[K - 1] = (_softmax_bias(ls[K - 1], cb[K - 1], cpb[K - 1], c[K - 1]) if biases
                   else np.full(len(c[K - 1]), np.nan))
    grad_bias[0] = (_gop(ls[0]).astype(np.float64) * cb[0][:, None] / c[0][None, :]).sum(0)
    for k in range(1, K):
        grad_bias[k] = (ls[k].g1.astype(np.float64) * c[k][None, :] / cpb[k][:, None]).sum(0)
    return StepSolution(c=c, s=s, cols=cols, bias=bias, grad_bias=grad_bias)


def _gamma_from_forward(ls, s, cb, k1, row_exp, col_exp, rows1, cols1):
    """γ from ``A = B·4^−γ + b⁰·2^−γ`` per hidden unit (see the module docstring): the pooled slope."""
    x1 = ls[1].forwards[0].astype(np.float64)
    y0 = ls[0].product.astype(np.float64)
    i, j = np.nonzero(x1)
    ip, jp = rows1[i], cols1[j]
    ok = (ip >= 0) & (jp >= 0) & ~np.isnan(row_exp[i]) & ~np.isnan(col_exp[j])
    i, j, ip, jp = i[ok], j[ok], ip[ok], jp[ok]
    if len(i) < 8:
        return None
    a = x1[i, j] * s[1][j] * k1[i] * np.exp2(row_exp[i]) / cb[0][ip]
    bb = y0[ip, jp] * np.exp2(col_exp[j]) / cb[0][ip]
    n = x1.shape[1]
    cnt = np.bincount(j, minlength=n).astype(np.float64)
    mean_a = np.bincount(j, a, minlength=n) / np.maximum(cnt, 1)
    mean_b = np.bincount(j, bb, minlength=n) / np.maximum(cnt, 1)
    da, db = a - mean_a[j], bb - mean_b[j]
    denom = (db * db).sum()
    if denom <= 0:
        return None
    slope = (da * db).sum() / denom
    if slope <= 0:
        return None
    return -np.log2(slope) / 2


def _hidden_bias(ls, k, s, cb, c, lk):
    """``b = X′ᵏ⁺¹ sᵏ⁺¹ / c_bᵏ⁺¹ − Y′ᵏ / (c_bᵏ cᵏ)`` on ReLU-positive entries, median per unit."""
    m = ls[k].product.shape[1]
    x = ls[k + 1].forwards[0].astype(np.float64)
    rows = np.where(lk.row_votes >= 0.5, lk.row_map, -1)
    cols = np.where(lk.col_votes >= 0.5, lk.col_map, -1)
    i, j = np.nonzero(x)
    ip, jp = rows[i], cols[j]
    ok = (ip >= 0) & (jp >= 0)
    i, j, ip, jp = i[ok], j[ok], ip[ok], jp[ok]
    h = x[i, j] * s[k + 1][j] / cb[k + 1][i]
    y = ls[k].product.astype(np.float64)[ip, jp] / (cb[k][ip] * c[k][jp])
    est = h - y
    out = np.full(m, np.nan)
    order = np.argsort(jp, kind="stable")
    jp, est = jp[order], est[order]
    units, start = np.unique(jp, return_index=True)
    for u, part in zip(units, np.split(est, start[1:])):
        out[u] = np.median(part)
    return out


def _softmax_bias(ls, cb, cpb, c):
    """The last layer's bias from the cross-entropy gradient ``dY = (softmax(Y + b) − onehot) / batch``."""
    y = ls.product.astype(np.float64) / (cb[:, None] * c[None, :])
    dy = ls.g1.astype(np.float64) * c[None, :] / cpb[:, None]
    batch = dy.shape[0]
    label = dy.argmin(1)
    p = batch * dy
    p[np.arange(batch), label] += 1.0
    good = np.isfinite(p).all(1) & (p > 1e-30).all(1) & np.isfinite(y).all(1)
    if not good.any():
        return np.full(y.shape[1], np.nan)
    v = np.log(p[good]) - y[good]
    v -= v.mean(1, keepdims=True)
    return np.median(v, axis=0)


@dataclass
class Carry:
    """How a layer's key order at an earlier step maps into its order at a later one (composed rotations):
    row i → ``rows[i]`` with ``c_later = c_earlier · scale[i]``; column j → ``cols[j]`` with sign ``sign[j]``."""

    rows: np.ndarray
    scale: np.ndarray
    cols: np.ndarray
    sign: np.ndarray


def carry(view, name, start: int, end: int, rekeys: dict) -> Carry | None:
    """Compose the re-key links of layer ``name`` at the steps in ``(start, end]``; None if one is missing."""
    m, n = next(ls.encrypted.shape[:2] for s, step_view in sorted(view.steps.items()) if s <= end
                for ls in [step_view.get(name)] if ls is not None and ls.encrypted is not None)
    rows, scale, cols, sign = np.arange(m), np.ones(m), np.arange(n), np.ones(n)
    for step in sorted(view.steps):
        if not start < step <= end:
            continue
        ls = view.steps[step].get(name)
        if ls is None or ls.encrypted is None:
            continue
        rk = rekeys.get((name, step))
        if rk is None:
            return None
        scale = scale * rk.scale[rows]
        sign = sign * rk.sign[cols]
        rows, cols = rk.rows[rows], rk.cols[cols]
    return Carry(rows, scale, cols, sign)


def merge_solutions(view, steps: list[int], found, rekeys: dict, *, depth: int = 8) -> StepSolution | None:
    """The last step's solution, its gaps (units inactive in that batch: no link, no bias) filled from up to
    ``depth`` earlier steps carried into the last step's key orders."""
    last = steps[-1]
    sol = solve_step(view, last, found, rekeys)
    if sol is None:
        return None
    names = view.layers
    for earlier in reversed(steps[-1 - depth:-1]):
        if all(np.isfinite(sol.c[k]).all() and np.isfinite(sol.bias[k]).all() for k in range(len(names))) and \
                all((sol.cols[k] >= 0).all() for k in range(1, len(names))):
            break
        old = solve_step(view, earlier, found, rekeys)
        if old is None:
            continue
        carried = [carry(view, name, earlier, last, rekeys) for name in names]
        if any(cr is None for cr in carried):
            break
        for k, cr in enumerate(carried):
            c_new = np.full_like(sol.c[k], np.nan)
            c_new[cr.rows] = old.c[k] * cr.scale
            gap = ~np.isfinite(sol.c[k])
            sol.c[k][gap] = c_new[gap]
            b_new = np.full_like(sol.bias[k], np.nan)
            b_new[cr.rows] = old.bias[k]
            gap = ~np.isfinite(sol.bias[k])
            sol.bias[k][gap] = b_new[gap]
            if k >= 1:
                below = carried[k - 1]
                cols_new = np.full_like(sol.cols[k], -1)
                ok = old.cols[k] >= 0
                cols_new[cr.cols[ok]] = below.rows[old.cols[k][ok]]
                gap = sol.cols[k] < 0
                sol.cols[k][gap] = cols_new[gap]
    return sol


def _final_in_key(view, name, last, final, rekeys):
    """The tracker's final W′ (in the key of its step) in the key of step ``last``."""
    key_step, w = final
    if key_step == last:
        return w
    cr = carry(view, name, last, key_step, rekeys)
    return w[cr.rows][:, cr.cols] / cr.scale[:, None] / cr.sign[None, :]


def _adam_biases(view, steps, found, rekeys, sol, hyper):
    """Enclave-side Adam on the biases, replayed: every step's bias gradient (column sums of the recovered dY),
    moments carried across re-keys by the row links; the last step's measured bias advanced one update."""
    lr = float(hyper["lr"])
    beta1, beta2 = (hyper.get("betas") or (0.9, 0.999))
    eps = float(hyper.get("eps", 1e-8))
    wd = float(hyper.get("weight_decay", 0.0) or 0.0)
    names = view.layers
    m1 = [None] * len(names)
    m2 = [None] * len(names)
    count = 0
    for step in steps:
        for k, name in enumerate(names):
            rk = rekeys.get((name, step))
            if rk is not None and m1[k] is not None:
                for state in (m1, m2):
                    moved = np.empty_like(state[k])
                    moved[rk.rows] = state[k]
                    state[k] = moved
        part = sol if step == steps[-1] else solve_step(view, step, found, rekeys, biases=wd != 0)
        if part is None:
            continue
        count += 1
        for k in range(len(names)):
            g = np.nan_to_num(part.grad_bias[k]) + wd * np.nan_to_num(part.bias[k])
            m1[k] = (1 - beta1) * g if m1[k] is None else beta1 * m1[k] + (1 - beta1) * g
            m2[k] = (1 - beta2) * g * g if m2[k] is None else beta2 * m2[k] + (1 - beta2) * g * g
    out = []
    for k in range(len(names)):
        if m1[k] is None:
            out.append(sol.bias[k])
            continue
        m_hat, v_hat = m1[k] / (1 - beta1 ** count), m2[k] / (1 - beta2 ** count)
        out.append(sol.bias[k] - lr * m_hat / (np.sqrt(v_hat) + eps))
    return out


def steal_model(view, steps, knowledge, hyper, found, class_of, notes, rekeys) -> dict | None:
    """The victim's final plaintext ``state_dict`` (see the module docstring), or None where this attack does
    not apply (conv layers, enclave-side updates, non-ReLU activations)."""
    names = view.layers
    try:
        model = knowledge.build_model()
    except Exception as exc:  # noqa: BLE001
        notes.append(f"model: cannot build the architecture ({exc})")
        return None
    state = model.state_dict()
    if any(view.conv.get(n) for n in names) or any(f"{n}.weight" not in state for n in names):
        notes.append("model: not attempted (only Linear stacks are decoded)")
        return None
    if knowledge.model_spec.get("activation", "relu") != "relu" or hyper.get("loss", "ce") != "ce":
        notes.append("model: not attempted (the decoder assumes ReLU hidden activations and cross-entropy)")
        return None
    finals = getattr(rekeys, "final", {})
    if not view.resident and any(name not in finals for name in names):
        notes.append("model: not attempted (enclave-side updates with an optimizer the re-key tracker does not "
                     "replay, or a key it could not link)")
        return None
    last = steps[-1]
    sol = merge_solutions(view, steps, found, rekeys)
    if sol is None:
        notes.append("model: the last step could not be solved")
        return None
    prev = solve_step(view, steps[-2], found, rekeys) if len(steps) > 1 else None
    K = len(names)
    lr, mu = float(hyper.get("lr", 0.05)), float(hyper.get("momentum", 0.0) or 0.0)
    wd = float(hyper.get("weight_decay", 0.0) or 0.0)
    eval_step = next((s for s in sorted(view.steps) if s > last), None)
    final_bias = []
    for k, name in enumerate(names):
        b_now = sol.bias[k]
        ev = view.steps.get(eval_step, {}).get(name) if eval_step is not None else None
        if ev is not None and ev.bias is not None and ev.encrypted is None:
            # fused: the final bias crossed at the evaluation, under the last step's key
            final_bias.append(ev.bias.reshape(-1).astype(np.float64) / sol.c[k])
            continue
        if not view.resident:
            continue  # enclave-side Adam: below, from the whole gradient history
        buf = sol.grad_bias[k] + wd * b_now
        if prev is not None and mu != 0:
            b_prev = prev.bias[k]
            rk = rekeys.get((name, last))
            moved = rk.rows if rk is not None else None
            if moved is not None:
                aligned = np.full_like(b_prev, np.nan)
                ok = moved >= 0
                aligned[moved[ok]] = b_prev[ok]
                b_prev = aligned
            step_prev = (b_prev - b_now) / lr
            buf = mu * np.nan_to_num(step_prev) + buf
        final_bias.append(b_now - lr * buf)
    if not view.resident:
        final_bias = _adam_biases(view, steps, found, rekeys, sol, hyper)
    # weights in true scale, key order of the last step
    weights = []
    for k, name in enumerate(names):
        held = view.steps[last][name].weight_after.astype(np.float64)
        if not view.resident:
            held = _final_in_key(view, name, last, finals[name], rekeys)
        wk = held / sol.c[k][:, None]
        if sol.s[k] is not None:
            wk = wk * sol.s[k][None, :]
        weights.append(wk)
    # hidden units never linked (no scale or bias: inactive in every solved batch) are switched off
    silenced = 0
    for k in range(K - 1):
        dead = ~(np.isfinite(weights[k]).all(1) & np.isfinite(final_bias[k]))
        silenced += int(dead.sum())
        weights[k][dead] = 0.0
        final_bias[k] = np.where(dead, 0.0, final_bias[k])
    # hidden-unit orders: layer k's columns into layer k−1's row order
    unmatched = 0
    for k in range(1, K):
        cols = sol.cols[k].copy()
        free_rows = sorted(set(range(weights[k - 1].shape[0])) - set(cols[cols >= 0].tolist()))
        free_cols = np.flatnonzero(cols < 0)
        unmatched += len(free_cols)
        cols[free_cols] = free_rows[:len(free_cols)]
        reordered = np.zeros_like(weights[k])
        reordered[:, cols] = weights[k]
        weights[k] = reordered
    # first layer columns → input features; last layer rows → true classes
    feature, sign = found.feature.get(last), found.sign.get(last)
    w0 = np.zeros_like(weights[0])
    w0[:, feature] = weights[0]
    weights[0] = w0
    to_class = class_of.get(last)
    if to_class is None:
        notes.append("model: the last step's class order is unresolved")
        return None
    wl = np.zeros_like(weights[-1])
    bl = np.zeros_like(final_bias[-1])
    wl[to_class] = weights[-1]
    bl[to_class] = final_bias[-1]
    weights[-1], final_bias[-1] = wl, bl
    out = {}
    for k, name in enumerate(names):
        w_key, b_key = f"{name}.weight", f"{name}.bias"
        out[w_key] = torch.from_numpy(weights[k]).to(state[w_key].dtype).reshape(state[w_key].shape)
        if b_key in state:
            bias = np.nan_to_num(final_bias[k], nan=0.0)
            out[b_key] = torch.from_numpy(bias).to(state[b_key].dtype)
    for key, value in state.items():
        out.setdefault(key, value)
    source = ("W′ replayed on the worker side (it applies SGD itself)" if view.resident else
              "the last W′ sent, advanced by the replayed enclave-side Adam update")
    update = "one SGD step" if view.resident else "one replayed Adam step"
    notes.append(f"model: {source}, decoded at step {last} (scales from the G₁→G₂ factor and the linked ratios, γ "
                 f"from the forward relation); biases from the forward relation "
                 f"{'and the crossed obfuscated bias ' if view.fused else ''}advanced {update}; "
                 f"{unmatched} hidden unit(s) without a link paired arbitrarily, {silenced} never linked switched off")
    return out
