"""The enclave/worker boundary: messages, transports and the one choke point."""

from .messages import Ref, Request, Response, Sent, Tag, bilinear_products

__all__ = ["Boundary", "Call", "PendingCall", "Ref", "Request", "Response", "Sent", "Tag", "bilinear_products"]


def __getattr__(name: str):  # the choke point (trusted side) loads on first use; workers import messages only
    if name in ("Boundary", "Call", "PendingCall"):
        from . import boundary

        return getattr(boundary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
