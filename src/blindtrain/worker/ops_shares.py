"""Worker instructions for additive secret sharing with Beaver triples over F_p (generic: no protocol names).

A share worker ``S_i`` (i = 0, 1) holds additive shares ``[v]_i`` with ``[v]_0 + [v]_1 = v mod p``.  To
compute shares of ``Y = f(X, B)`` (``f`` bilinear) it uses a triple ``(A, Bt, C = f(A, Bt))`` from the dealer:

1. ``beaver_open``: ``E_i = [X]_i − [A]_i``, ``F_i = [B]_i − [Bt]_i`` (mod p); returned, to be relayed to
   the other share worker through the enclave (:mod:`blindtrain.boundary.peer`);
2. ``beaver_close``: with the other's ``E_j, F_j``: ``E = E_i + E_j``, ``F = F_i + F_j`` and
   ``[Y]_0 = f(E, F + [Bt]_0) + f([A]_0, F) + [C]_0``, ``[Y]_1 = f(E, [Bt]_1) + f([A]_1, F) + [C]_1``,
   so ``[Y]_0 + [Y]_1 = f(E + A, F + Bt) = f(X, B)``.

Shares a worker can expand itself arrive as 32-byte seeds (ChaCha20 keys, expanded by :func:`expand`, which
the enclave runs too): the worker's share of the input and of A, Bt (and S0's share of C).  The worker
imports no trusted code (not :mod:`blindtrain.crypto`): only the ``cryptography`` package's ChaCha20.
``beaver_triple`` is the dealer's instruction: from the seeds of ``[A]_0, [A]_1, [Bt]_0, [Bt]_1, [C]_0`` it
returns ``[C]_1 = f(A, Bt) − [C]_0``.  ``share_update`` applies a held product to a held weight share:
``[W]_i ← [W]_i − [dW]_i`` (SGD on the shares; exact in F_p).
"""

from __future__ import annotations

import numpy as np
import torch

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from ..field.engine import engine_for
from .ops import instruction

SEED_BYTES = 32


def expand(seed: torch.Tensor, shape, modulus: int) -> torch.Tensor:
    """The share a 32-byte seed stands for: uniform in ``[0, p)`` (int64), the same on every side.

    ChaCha20 keyed by the seed (a fresh key per seed, so a fixed nonce), 64-bit words masked to
    ``bitlen(p)`` bits, those ``≥ p`` rejected: exactly uniform mod p."""
    key = bytes(seed.to("cpu", torch.uint8).numpy().tobytes())
    if len(key) != SEED_BYTES:
        raise ValueError(f"a share seed has {SEED_BYTES} bytes, got {len(key)}")
    count = int(np.prod(shape, dtype=np.int64))
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    mask = np.uint64((1 << modulus.bit_length()) - 1)
    out, have = np.empty(count, dtype=np.int64), 0
    while have < count:
        need = count - have
        words = np.frombuffer(stream.update(bytes(8 * (need + need // 4 + 16))), dtype=np.uint64) & mask
        kept = words[words < np.uint64(modulus)][:need]
        out[have:have + kept.size] = kept.astype(np.int64)
        have += kept.size
    return torch.from_numpy(out.reshape(tuple(shape)))


def _operand(worker, args, name: str, shape, modulus: int, layout: str) -> torch.Tensor:
    """This worker's share of an operand: a sent share, a seed to expand, or a held share (by handle)."""
    value = args[name]
    if value.dtype == torch.uint8:
        value = expand(value, shape if layout != "t" else tuple(reversed(shape)), modulus).to(worker.device)
    value = value.to(torch.int64)
    return value.t() if layout == "t" else value


def _fn_params(params: dict) -> dict:
    return dict(params.get("fn_params", {}))


@instruction("beaver_open")
def _beaver_open(worker, args, params):
    """``E_i = [X]_i − [A]_i`` and ``F_i = [B]_i − [Bt]_i``, flattened and concatenated (int64, mod p).

    ``args``: ``A`` (the share of X) and ``B`` (shares, seeds or held handles), ``seeds`` (uint8, 2 or 3 × 32: A, Bt[, C]).
    ``params``: ``modulus``, ``a_shape``, ``b_shape``, ``b_layout`` (``"t"``: B is the transpose of what is
    held), ``handle`` (prefix under which A, Bt, C, E_i, F_i stay until ``beaver_close``)."""
    p = int(params["modulus"])
    a_shape, b_shape = tuple(params["a_shape"]), tuple(params["b_shape"])
    x = _operand(worker, args, "A", a_shape, p, "")
    b = _operand(worker, args, "B", b_shape, p, params.get("b_layout", ""))
    seeds = args["seeds"].to("cpu")
    a_share = expand(seeds[0], a_shape, p).to(worker.device)
    bt_share = expand(seeds[1], b_shape, p).to(worker.device)
    handle = params["handle"]
    if seeds.shape[0] > 2:
        worker.state[f"{handle}/C"] = seeds[2].clone()  # S0's share of C: a seed, expanded at close
    e = torch.remainder(x - a_share, p)
    f = torch.remainder(b - bt_share, p)
    worker.state[f"{handle}/A"], worker.state[f"{handle}/Bt"] = a_share, bt_share
    worker.state[f"{handle}/E"], worker.state[f"{handle}/F"] = e, f
    return torch.cat([e.reshape(-1), f.reshape(-1)])


@instruction("beaver_close", screens_results=True)
def _beaver_close(worker, args, params):
    """``[Y]_i`` from the other worker's opened differences ``EF`` (and ``C``: S1's share of C, sent).

    ``params``: ``party`` (0 or 1), ``fn``, ``fn_params``, ``modulus``, ``a_shape``, ``b_shape``, ``out_shape``,
    ``handle``; ``apply_to`` (a held weight share) with ``apply_layout``: instead of returning ``[Y]_i``
    keep it under ``handle + "/Y"`` for ``share_update``."""
    p, party, handle = int(params["modulus"]), int(params["party"]), params["handle"]
    a_shape, b_shape = tuple(params["a_shape"]), tuple(params["b_shape"])
    a_numel = int(np.prod(a_shape))
    other = args["EF"].to(torch.int64)
    state = worker.state
    e = torch.remainder(state.pop(f"{handle}/E") + other[:a_numel].reshape(a_shape), p)
    f = torch.remainder(state.pop(f"{handle}/F") + other[a_numel:].reshape(b_shape), p)
    a_share, bt_share = state.pop(f"{handle}/A"), state.pop(f"{handle}/Bt")
    if party == 0:
        c_share = expand(state.pop(f"{handle}/C"), tuple(params["out_shape"]), p).to(worker.device)
        right = torch.remainder(f + bt_share, p)
    else:
        c_share = args["C"].to(torch.int64)
        right = bt_share
    engine = engine_for(p, params.get("backend", "auto"))
    fn, fn_params = params["fn"], _fn_params(params)
    y = engine.bilinear(fn, e, right, fn_params) + engine.bilinear(fn, a_share, f, fn_params)
    y = torch.remainder(y + c_share, p)
    y = worker.screen(y)
    if params.get("keep"):
        pending = state.get(params["keep"])
        state[params["keep"]] = y if pending is None else torch.remainder(pending + y, p)
        return None
    return y


@instruction("beaver_triple")
def _beaver_triple(worker, args, params):
    """The dealer: ``[C]_1 = f(A, Bt) − [C]_0 mod p`` from the seeds of ``[A]_0, [A]_1, [Bt]_0, [Bt]_1, [C]_0``."""
    p = int(params["modulus"])
    a_shape, b_shape = tuple(params["a_shape"]), tuple(params["b_shape"])
    seeds = args["seeds"].to("cpu")
    a = torch.remainder(expand(seeds[0], a_shape, p) + expand(seeds[1], a_shape, p), p).to(worker.device)
    bt = torch.remainder(expand(seeds[2], b_shape, p) + expand(seeds[3], b_shape, p), p).to(worker.device)
    engine = engine_for(p, params.get("backend", "auto"))
    c = engine.bilinear(params["fn"], a, bt, _fn_params(params))
    c0 = expand(seeds[4], tuple(c.shape), p).to(worker.device)
    return torch.remainder(c - c0, p)


@instruction("share_store")
def _share_store(worker, args, params):
    """Hold a share under ``params["handle"]``: ``S`` sent as a tensor, or a seed expanded to ``shape``."""
    value = args["S"]
    if value.dtype == torch.uint8:
        value = expand(value, tuple(params["shape"]), int(params["modulus"])).to(worker.device)
    worker.state[params["handle"]] = value.to(torch.int64).clone()
    return None


@instruction("share_update")
def _share_update(worker, args, params):
    """``[W]_i ← [W]_i − [dW]_i mod p`` for each ``(target, pending, layout)`` in ``params["updates"]``
    (``layout`` ``"t"``: the held product is the transpose of the weight's layout); the pending product is
    dropped.  Exact: the enclave folded the learning rate into the gradient's fixed point."""
    p = int(params["modulus"])
    for target, pending, layout in params["updates"]:
        delta = worker.state.pop(pending)
        if layout == "t":
            delta = delta.t()
        weight = worker.state[target]
        weight.copy_(torch.remainder(weight - delta.reshape(weight.shape), p))
    return None
