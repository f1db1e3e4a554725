"""One Beaver product ``f(X, B) mod p`` on the share workers S0, S1 and the dealer D: encode → dispatch → decode.

``encode`` (:func:`share_operand`): the enclave splits a fixed-point operand ``Q`` into fresh shares
``[Q]_0 = expand(seed)`` (S0 gets the 32-byte seed, expands it itself) and ``[Q]_1 = Q − [Q]_0 mod p``
(sent to S1).  A weight is not shared per op: S0 and S1 hold its shares (:class:`HeldOperand`).

``dispatch`` (:func:`beaver_product`), five messages, every one through the boundary:

1. enclave → D: seeds of ``[A]_0, [A]_1, [Bt]_0, [Bt]_1, [C]_0`` (fresh CSPRNG keys for this op);
   D → (relay) → S1: ``[C]_1 = f(A, Bt) − [C]_0``.  D never sees X or B; it can only corrupt ``C``.
2. enclave → S_i: its share of X (seed or tensor), of B (seed, tensor or held handle), its triple seeds;
   S_i → (relay) → S_{1−i}: ``E_i = [X]_i − [A]_i``, ``F_i = [B]_i − [Bt]_i`` (uniform: A, Bt are).
3. S_i computes ``[Y]_i`` (:mod:`blindtrain.worker.ops_shares`), returned or kept (SGD on the shares).

``decode`` (:func:`reconstruct`): ``Y = [Y]_0 + [Y]_1 mod p``, verified by the caller before use.

Seeds instead of tensors (what crosses): S0 never receives a share tensor from the enclave (its shares of
inputs and triples are seeds); the dealer receives seeds only; S1 receives ``[X]_1`` (and ``[B]_1``) in full
and ``[C]_1`` from the dealer.  Every tensor a role receives is uniform over F_p (or a uniform seed),
fresh for every op and step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..boundary import Ref, Request, Sent, Tag
from ..boundary.peer import PeerChannel, Relayed, relay
from ..errors import IntegrityError
from ..worker.ops_shares import SEED_BYTES, expand

SHARE_ROLES = ("s0", "s1")
DEALER = "dealer"


@dataclass(frozen=True)
class SharedOperand:
    """Fresh shares of one operand: S0's seed and S1's share tensor (int64 in [0, p))."""

    seed0: torch.Tensor
    share1: torch.Tensor

    def arg(self, party: int) -> Sent:
        return Sent(self.seed0 if party == 0 else self.share1, "share")


@dataclass(frozen=True)
class HeldOperand:
    """A weight whose shares S0 and S1 hold under ``handle``; ``layout`` ``"t"``: the op takes its transpose."""

    handle: str
    layout: str = ""

    def arg(self, party: int) -> Ref:
        return Ref(self.handle)


@dataclass(frozen=True)
class BeaverOp:
    """What one product needs: the bilinear function, its parameters and the operand and result shapes."""

    fn: str
    fn_params: dict
    a_shape: tuple
    b_shape: tuple
    out_shape: tuple
    backend: str = "auto"


def seed(rng, *label) -> torch.Tensor:
    """A fresh 32-byte seed (uint8 tensor) from the enclave CSPRNG."""
    return torch.frombuffer(bytearray(rng.random_bytes(SEED_BYTES, label=("shares-seed", *label))), dtype=torch.uint8)


def share_operand(rng, q: torch.Tensor, p: int, *, label: tuple) -> SharedOperand:
    """Split ``q`` (int64, any signed representative) into fresh shares; only S1's share crosses in full."""
    seed0 = seed(rng, *label)
    share0 = expand(seed0, tuple(q.shape), p)
    return SharedOperand(seed0, sub_mod(field_elements(q.to(torch.int64), p), share0, p))


def field_elements(q: torch.Tensor, p: int) -> torch.Tensor:
    """``q mod p`` in ``[0, p)``: a conditional add when ``|q| < p`` (the codec's values), else a division."""
    if q.numel() and (int(q.min()) <= -p or int(q.max()) >= p):
        return torch.remainder(q, p)
    return torch.where(q < 0, q + p, q)


def sub_mod(x: torch.Tensor, y: torch.Tensor, p: int) -> torch.Tensor:
    """``x − y mod p`` for ``x, y ∈ [0, p)`` (no int64 division)."""
    d = x - y
    return torch.where(d < 0, d + p, d)


def _opened(result, numel: int, who: str, tag: Tag) -> torch.Tensor:
    if not torch.is_tensor(result) or result.dtype != torch.int64 or result.numel() != numel:
        raise IntegrityError(layer=tag.layer, op=tag.op, step=tag.step,
                             detail=f"{who} returned a malformed message (expected {numel} int64 field elements)")
    return result


def beaver_product(channel: PeerChannel, rng, tag: Tag, op: BeaverOp, x, b, *, nonce: int,
                   keep: str | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Shares ``([Y]_0, [Y]_1)`` of ``Y = f(X, B) mod p`` (``keep``: they stay on S0 / S1 under that handle)."""
    p = tag.modulus
    label = (tag.layer, tag.op, tag.step, nonce)
    a_seeds = [seed(rng, *label, "A", i) for i in range(2)]
    b_seeds = [seed(rng, *label, "Bt", i) for i in range(2)]
    c_seed = seed(rng, *label, "C", 0)
    common = {"modulus": p, "a_shape": list(op.a_shape), "b_shape": list(op.b_shape), "fn": op.fn,
              "fn_params": op.fn_params, "backend": op.backend}
    dealt = channel.call(DEALER, Request("beaver_triple", {"seeds": Sent(torch.stack(
        [a_seeds[0], a_seeds[1], b_seeds[0], b_seeds[1], c_seed]), "share")}, tag, dict(common)), result_to="s1")
    c1 = _opened(dealt.result, _numel(op.out_shape), "the dealer", tag)
    handle = f"beaver/{tag.layer}/{tag.op}/{nonce}"
    opened = []
    for party in (0, 1):
        seeds = [a_seeds[party], b_seeds[party]] + ([c_seed] if party == 0 else [])
        b_layout = b.layout if isinstance(b, HeldOperand) else ""
        request = Request("beaver_open", {"A": x.arg(party), "B": b.arg(party),
                                          "seeds": Sent(torch.stack(seeds), "share")}, tag,
                          {**common, "b_layout": b_layout, "handle": handle})
        reply = channel.call(SHARE_ROLES[party], request, result_to=SHARE_ROLES[1 - party])
        opened.append(Relayed(_opened(reply.result, _numel(op.a_shape) + _numel(op.b_shape),
                                      f"share worker {SHARE_ROLES[party]}", tag), SHARE_ROLES[party]))
    shares = []
    for party in (0, 1):
        args = {"EF": relay(opened[1 - party])}
        relayed = {"EF": SHARE_ROLES[1 - party]}
        if party == 1:
            args["C"], relayed["C"] = relay(Relayed(c1, DEALER)), DEALER
        request = Request("beaver_close", args, tag,
                          {**common, "party": party, "handle": handle, "out_shape": list(op.out_shape),
                           "keep": keep}, return_result=keep is None)
        reply = channel.call(SHARE_ROLES[party], request, relayed=relayed)
        if keep is None:
            result = reply.result
            if not torch.is_tensor(result) or result.dtype != torch.int64 or tuple(result.shape) != tuple(op.out_shape):
                raise IntegrityError(layer=tag.layer, op=tag.op, step=tag.step,
                                     detail=f"share worker {SHARE_ROLES[party]} returned a malformed result share")
            shares.append(result)
    return None if keep is not None else (shares[0], shares[1])


def reconstruct(shares: tuple[torch.Tensor, torch.Tensor], p: int) -> torch.Tensor:
    """``Y = [Y]_0 + [Y]_1 mod p`` (each reduced first: a worker's out-of-range value cannot overflow)."""
    y0, y1 = field_elements(shares[0], p), field_elements(shares[1], p)
    total = y0 + y1  # < 2p < 2^63
    return torch.where(total >= p, total - p, total)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
