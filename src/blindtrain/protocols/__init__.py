"""Protocols, one module each, found by :func:`load_all` (no central list to edit)."""

from __future__ import annotations

import importlib
import pkgutil

from .base import PROTOCOLS, Protocol, ProtocolInfo, get, register

__all__ = ["PROTOCOLS", "Protocol", "ProtocolInfo", "get", "register", "load_all", "names"]


def load_all() -> dict[str, type[Protocol]]:
    """Import every protocol module in this package (each registers itself)."""
    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("base", "options") and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    return PROTOCOLS


def names() -> list[str]:
    return sorted(load_all())
