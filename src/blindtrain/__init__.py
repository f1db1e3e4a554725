"""blindtrain: train PyTorch models on untrusted GPU workers with the secrets kept in a TEE.

    import blindtrain as bt
    session = bt.Session(protocol="enclave", device="auto", seed=0)
    model, optimizer = session.prepare(model, optimizer)
"""

from .errors import BlindtrainError, IntegrityError, UsageError, WorkerCrashed, WorkerError

__version__ = "0.1.0"

__all__ = ["Session", "validate", "Placement", "Protocol", "ProtocolInfo", "register", "PROTOCOLS", "BlindtrainError",
           "IntegrityError", "UsageError", "WorkerCrashed", "WorkerError", "__version__"]

# The trusted stack loads on first use, so that a worker process (``python -m blindtrain.worker``)
# imports the worker side only.
_LAZY = {"Session": ".session", "validate": ".placement", "Placement": ".placement", "Protocol": ".protocols",
         "ProtocolInfo": ".protocols", "register": ".protocols", "PROTOCOLS": ".protocols"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
