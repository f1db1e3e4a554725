"""``blindtrain bench``: every protocol on models of growing size, the cost model beside the
measurement, and a report with plots (``results.json``, ``report.md``, PNGs)."""

from .presets import FULL, PRESETS, QUICK, TINY, ModelSpec, Preset

__all__ = ["FULL", "PRESETS", "QUICK", "TINY", "ModelSpec", "Preset"]
