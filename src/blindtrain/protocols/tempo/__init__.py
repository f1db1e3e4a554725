"""The ``tempo`` protocol (Xu & Fang): permutation obfuscation of weights and activations, DESIGN.md.

The protocol class is :class:`~.protocol.Tempo` (its module docstring states the scheme); its parts:

* :mod:`.keys`        keystreams, batch keys, permutations, power-of-two scales, signs, derived constants
* :mod:`.codec`       encode operands / decode results under the keys, and the backward's worker products
* :mod:`.projections` the check vectors and the tracked projections of the worker-held weights
* :mod:`.checks`      the Freivalds checks over floats: verdicts, operand sides, detection statistics
* :mod:`.bounds`      the float32 rounding-error model the tolerances are built from
* :mod:`.residency`   worker-held weights: key epochs, encryption, rotation, fetch, read-out
* :mod:`.sgd`         SGD applied by the workers to the weights in their key, and the projections' recurrences
* :mod:`.attention`   both-private products (attention)
* :mod:`.resume`      the session state of a sealed checkpoint
* :mod:`.report`      privacy figures, the metrics summary and the cost model
* :mod:`.layers`      per-layer state
* :mod:`.fuse`        fused activations (``--fuse-activations``)
* :mod:`.contract`    ordinary PyTorch habits: state_dict hooks, a foreign optimizer refused

Importing this package registers ``tempo`` (:func:`blindtrain.protocols.load_all`).
"""

from .bounds import CHECK_MARGIN, FALSE_ALARM_PER_CHECK, LAMBDA, MAX_COMPARED, U32
from .protocol import Tempo
from .report import FUSED_INTEGRITY

__all__ = ["CHECK_MARGIN", "FALSE_ALARM_PER_CHECK", "FUSED_INTEGRITY", "LAMBDA", "MAX_COMPARED", "U32", "Tempo"]
