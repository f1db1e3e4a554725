"""Worker-to-worker traffic (S0 ↔ S1, dealer → S*) as a relay through the enclave.

Design: the enclave **relays**.  A tensor one untrusted role sends another (an opened masked difference
``E_i, F_i``, the dealer's share of a triple) is the result of a :meth:`Boundary.call` to the sender and
travels to the receiver as an argument of the receiver's next :meth:`Boundary.call`.  So every byte of it
crosses the one choke point twice, is counted by the ledger per worker, and lands in the receiver's
transcript exactly as received.  Why a relay rather than a brokered direct channel: it keeps one
choke point (no second path to audit, no worker-to-worker sockets to secure on any transport, nothing
transport-specific: ``inproc`` and ``process`` work unchanged; ``dist`` needs only its rank list to name
the roles s0, s1, dealer, not done yet); the price is enclave bandwidth (each relayed byte
is received and re-sent by the enclave: memory copies, no arithmetic) — :class:`Links` reports it.

:class:`Links` keeps the *logical* per-link byte counts that the protocol reports and its cost model
predicts: ``enclave->s0``, ``s0->enclave``, ``s0->s1``, ``dealer->s1`` ...  A relayed tensor counts once,
on its logical link (``s0->s1``), not also as ``s0->enclave`` + ``enclave->s1``; ``relayed_bytes`` says how
many bytes the enclave forwarded.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from .messages import Request, Response, Sent, tensor_bytes

ENCLAVE = "enclave"


@dataclass(frozen=True)
class Relayed:
    """A tensor from untrusted role ``source``, on its way to another role through the enclave."""

    tensor: torch.Tensor
    source: str


@dataclass
class Links:
    """Logical bytes and messages per link ``"a->b"`` (roles: ``enclave``, ``s0``, ``s1``, ``dealer``)."""

    bytes: Counter = field(default_factory=Counter)
    messages: Counter = field(default_factory=Counter)
    relayed_bytes: int = 0

    def count(self, source: str, target: str, nbytes: int) -> None:
        self.bytes[f"{source}->{target}"] += nbytes
        self.messages[f"{source}->{target}"] += 1

    def as_dict(self) -> dict:
        return {"bytes": dict(sorted(self.bytes.items())), "messages": dict(sorted(self.messages.items())),
                "relayed_through_enclave_bytes": self.relayed_bytes}


def relay(tensor: Relayed, *, kind: str = "share") -> Sent:
    """The argument that carries a relayed tensor to its receiver (transcript ``kind``)."""
    return Sent(tensor.tensor, kind)


class PeerChannel:
    """Calls roles through the boundary and keeps the per-link accounting of :class:`Links`.

    ``call(role, request, relayed={arg: source}, result_to=role_or_None)``: the result counts on
    ``role->result_to`` when it will be relayed (``result_to``), else on ``role->enclave``; arguments named
    in ``relayed`` (relayed results, already counted) add to ``relayed_bytes`` only, the others count on
    ``enclave->role``."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.links = Links()

    def call(self, role: str, request: Request, *, relayed: dict[str, str] | None = None,
             result_to: str | None = None) -> Response:
        relayed = relayed or {}
        for name, arg in request.sent_tensors():
            if name in relayed:  # counted on its logical link when it left its sender
                self.links.relayed_bytes += tensor_bytes(arg.tensor)
            else:
                self.links.count(ENCLAVE, role, tensor_bytes(arg.tensor))
        response = self.runtime.call(request, role=role)
        if request.return_result and torch.is_tensor(response.result):
            self.links.count(role, result_to or ENCLAVE, tensor_bytes(response.result))
        return response
