"""``blindtrain bench``: every protocol on models of growing size, the cost model beside the
measurement, and a report with plots.

    blindtrain bench --preset quick --out docs/benchmarks/quick      # 2-core CPU, < 10 minutes
    blindtrain bench --preset full --device cuda --out docs/benchmarks/full
    blindtrain bench --preset quick --models mlp,lenet --protocols plain,enclave,otp --steps 6

Modules: :mod:`.presets` (what runs), :mod:`.harness` (cells, per-step ledger deltas, failures
recorded, ratios), :mod:`.projection` (cost model -> seconds on a device profile; labelled a
projection), :mod:`.report` (``results.json``, ``report.md``, the generated ordering check),
:mod:`.plots` (PNGs).  Protocols come from the registry; a new one needs no edit here.
"""

from .presets import FULL, PRESETS, QUICK, TINY, ModelSpec, Preset

__all__ = ["FULL", "PRESETS", "QUICK", "TINY", "ModelSpec", "Preset"]
