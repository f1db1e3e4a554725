"""blindtrain: train PyTorch models on untrusted GPU workers with the secrets kept in a TEE.

    import blindtrain as bt
    session = bt.Session(protocol="enclave", device="auto", seed=0)
    model, optimizer = session.prepare(model, optimizer)
"""

from .errors import BlindtrainError, IntegrityError, UsageError, WorkerCrashed
from .protocols import PROTOCOLS, Protocol, ProtocolInfo, register
from .placement import Placement, validate
from .session import Session

__version__ = "0.1.0"

__all__ = ["Session", "validate", "Placement", "Protocol", "ProtocolInfo", "register", "PROTOCOLS", "BlindtrainError",
           "IntegrityError", "UsageError", "WorkerCrashed", "__version__"]
