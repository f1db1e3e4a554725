"""The enclave/worker boundary: messages, transports and the one choke point."""

from .boundary import Boundary
from .messages import Ref, Request, Response, Sent, Tag, bilinear_products

__all__ = ["Boundary", "Ref", "Request", "Response", "Sent", "Tag", "bilinear_products"]
