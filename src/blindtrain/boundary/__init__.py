"""The enclave/worker boundary: messages, transports and the one choke point."""

from .boundary import Boundary
from .messages import Ref, Request, Response, Sent, Tag

__all__ = ["Boundary", "Ref", "Request", "Response", "Sent", "Tag"]
