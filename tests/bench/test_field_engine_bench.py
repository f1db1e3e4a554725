"""The field-engine benchmark: every variant timed against float32, the baseline it replaced still exact."""

import torch

from blindtrain.bench import field_engine, report
from blindtrain.field.engine import FieldEngine


def test_measure_reports_every_variant_and_renders():
    result = field_engine.measure(shapes=field_engine.TINY_SHAPES, rounds=1, echo=lambda *a: None)
    assert [r["shape"] for r in result["rows"]] == [s.name for s in field_engine.TINY_SHAPES]
    for row in result["rows"]:
        assert set(row["ratio_to_float32"]) == {"float32", "int8/w16", "float64/w16", "int8/w24", "float64/w24",
                                                "legacy-float64 (p=2^24-3, w10)"}
        assert row["ratio_to_float32"]["float32"] == 1.0 and all(v > 0 for v in row["ms"].values())
    text = "\n".join(field_engine.markdown(result))
    assert "Field engine" in text and "int8/w24" in text and field_engine.TINY_SHAPES[0].name in text
    assert report.field_engine.markdown(None) == []  # a bench without field protocols has no section


def test_legacy_baseline_is_the_exact_old_path():
    p = field_engine.LEGACY_MODULUS
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, p, (3, 300), generator=g)
    w = torch.randint(-2**9, 2**9, (300, 5), generator=g)
    legacy = field_engine.legacy_float64("matmul", a.double(), w.double(), p, {})
    assert torch.equal(legacy.long(), FieldEngine(p).bilinear("matmul", a, w))
