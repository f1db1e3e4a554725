"""Convolutions with few channels on one side, without im2col: the enclave's check products.

The Freivalds checks of a conv layer contract its results with a few (k) secret vectors, so
every product the enclave computes has ``J = k`` channels on one side.  ``F.conv2d`` and
its gradients would unfold (im2col) the wide side k_h·k_w times, as costly as the layer's own
unfolding.  Here the wide side is read once, by a batched GEMM into
``J·k_h·k_w`` thin maps, and the spatial taps are shifted adds on those thin maps.

All four equal their ``torch`` counterparts (tested): ``conv(x, w)`` with ``w: J×n×kh×kw``,
``conv_input(g, v, input_size)`` with ``v: m×J×kh×kw``, ``conv_weight_thin_out(x, g)``
(``g`` has J channels) and ``conv_weight_thin_in(xs, g)`` (``xs`` has J channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


#: input channels up to which :func:`conv` leaves the work to ``F.conv2d``
NARROW = 4


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _geom(params):
    return _pair(params.get("stride", 1)), _pair(params.get("padding", 0)), _pair(params.get("dilation", 1))


def _taps(kh, kw, s, d, ho, wo):
    for u in range(kh):
        for v in range(kw):
            yield u, v, (slice(u * d[0], u * d[0] + s[0] * (ho - 1) + 1, s[0]),
                         slice(v * d[1], v * d[1] + s[1] * (wo - 1) + 1, s[1]))


def _out_size(h, w, kh, kw, s, p, d):
    return ((h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1, (w + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1)


def conv(x, weight, params, extra=None):
    """``F.conv2d(x, weight, **params)`` for a weight with few output channels J.

    ``extra`` (e×n, optional): also return ``channels(x, extraᵀ)`` from the same read of ``x``.
    With few channels on both sides (a channel-norm map, as the checks' tolerances convolve) there is
    nothing to unfold and ``F.conv2d`` itself is faster."""
    J, n, kh, kw = weight.shape
    b, _, h, w = x.shape
    if extra is None and n <= NARROW:
        return F.conv2d(x, weight, **params)
    w2 = weight.permute(0, 2, 3, 1).reshape(J * kh * kw, n)
    if extra is not None:
        w2 = torch.cat([w2, extra])
    z = torch.matmul(w2, x.reshape(b, n, h * w))
    out = conv_taps(z[:, :J * kh * kw], (J, kh, kw), (h, w), params)
    return out if extra is None else (out, z[:, J * kh * kw:].reshape(b, -1, h, w))


def conv_taps(z, jkk, hw, params):
    """The spatial taps of :func:`conv` from ``z = W(J·kh·kw × n) · x`` (b × J·kh·kw × h·w)."""
    s, p, d = _geom(params)
    J, kh, kw = jkk
    h, w = hw
    b = z.shape[0]
    ho, wo = _out_size(h, w, kh, kw, s, p, d)
    z = F.pad(z.reshape(b, J * kh * kw, h, w), (p[1], p[1], p[0], p[0])).view(b, J, kh, kw, h + 2 * p[0], w + 2 * p[1])
    out = torch.zeros(b, J, ho, wo, dtype=z.dtype)
    for u, v, (sy, sx) in _taps(kh, kw, s, d, ho, wo):
        out += z[:, :, u, v, sy, sx]
    return out


def conv_input(grad, weight, input_size, params, extra=None):
    """``conv2d_input(input_size, weight, grad, **params)`` for a weight ``m×J×kh×kw`` (J small).

    ``extra`` (e×m, optional): also return ``channels(grad, extraᵀ)`` from the same read of ``grad``.
    With few channels on both sides and stride 1 (a channel-norm map, as the checks' tolerances take) it is
    ``F.conv2d`` with the kernel flipped and its channels swapped, which is faster."""
    s, p, d = _geom(params)
    m, J, kh, kw = weight.shape
    b, _, ho, wo = grad.shape
    h, w = input_size[2], input_size[3]
    if (extra is None and m <= NARROW and s == (1, 1) and d == (1, 1) and p[0] <= kh - 1 and p[1] <= kw - 1
            and (ho, wo) == (h + 2 * p[0] - kh + 1, w + 2 * p[1] - kw + 1)):
        return F.conv2d(grad, weight.flip(2, 3).transpose(0, 1), padding=(kh - 1 - p[0], kw - 1 - p[1]))
    w2 = weight.permute(1, 2, 3, 0).reshape(J * kh * kw, m)
    if extra is not None:
        w2 = torch.cat([w2, extra])
    zz = torch.matmul(w2, grad.reshape(b, m, ho * wo))
    z = zz[:, :J * kh * kw].reshape(b, J, kh, kw, ho, wo)
    hp = max(h + 2 * p[0], d[0] * (kh - 1) + s[0] * (ho - 1) + 1)
    wp = max(w + 2 * p[1], d[1] * (kw - 1) + s[1] * (wo - 1) + 1)
    out = torch.zeros(b, J, hp, wp, dtype=grad.dtype)
    for u, v, (sy, sx) in _taps(kh, kw, s, d, ho, wo):
        out[:, :, sy, sx] += z[:, :, u, v]
    out = out[:, :, p[0]:p[0] + h, p[1]:p[1] + w]
    return out if extra is None else (out, zz[:, J * kh * kw:].reshape(b, -1, ho, wo))


def conv_weight_thin_out(x, grad, kernel, params):
    """``conv2d_weight(x, (J, n, kh, kw), grad, **params)`` for ``grad`` with J channels."""
    s, p, d = _geom(params)
    kh, kw = kernel
    b, n, h, w = x.shape
    J, ho, wo = grad.shape[1:]
    shifted = torch.zeros(b, J, kh, kw, h + 2 * p[0] + s[0] + d[0] * kh, w + 2 * p[1] + s[1] + d[1] * kw,
                          dtype=x.dtype)
    for u, v, (sy, sx) in _taps(kh, kw, s, d, ho, wo):
        shifted[:, :, u, v, sy, sx] = grad
    shifted = shifted[..., p[0]:p[0] + h, p[1]:p[1] + w].reshape(b, J * kh * kw, h * w)
    # the thin side as the GEMMs' rows (J·kh·kw × n per sample): faster than n × (J·kh·kw)
    out = torch.bmm(shifted, x.reshape(b, n, h * w).transpose(1, 2)).sum(0)  # (J·kh·kw) × n
    return out.view(J, kh, kw, n).permute(0, 3, 1, 2)


def conv_weight_thin_in(xs, grad, kernel, params):
    """``conv2d_weight(xs, (m, J, kh, kw), grad, **params)`` for ``xs`` with J channels."""
    s, p, d = _geom(params)
    kh, kw = kernel
    b, J, h, w = xs.shape
    m, ho, wo = grad.shape[1:]
    xp = F.pad(xs, (p[1], p[1] + s[1] + d[1] * kw, p[0], p[0] + s[0] + d[0] * kh))
    taps = torch.stack([xp[:, :, sy, sx] for _, _, (sy, sx) in _taps(kh, kw, s, d, ho, wo)], 2)  # b,J,k²,ho,wo
    out = torch.bmm(taps.reshape(b, J * kh * kw, ho * wo), grad.reshape(b, m, ho * wo).transpose(1, 2)).sum(0)
    return out.view(J, kh, kw, m).permute(3, 0, 1, 2)


def channels(t, vectors):
    """``einsum('bc...,ck->bk...', t, vectors)`` as one batched GEMM."""
    b, c = t.shape[:2]
    return torch.matmul(vectors.t(), t.reshape(b, c, -1)).view(b, vectors.shape[1], *t.shape[2:])
