"""The generated ordering check and tracking summary on hand-made results."""

from __future__ import annotations

from blindtrain.bench import report


def _cell(protocol, step_s, spread, projected_s, messages=1):
    proj = {"step_seconds": projected_s, "terms": {"transitions": 0.0}, "terms_excluded": {}}
    return {"protocol": protocol, "model": "m", "batch": 8, "mode": "train", "status": "ok",
            "step_seconds": {"median": step_s, "min": step_s - spread, "max": step_s + spread},
            "steps_per_second": {"median": 1 / step_s}, "measured": {"messages": messages},
            "projections": {"local": proj, "enclave_tracking": {"modelled_local_seconds": projected_s,
                                                               "measured_seconds": step_s,
                                                               "measured_over_modelled": step_s / projected_s}}}


def _results(cells, device="cpu"):
    return {"cells": cells, "profiles": {"local": {"worker_tflops": 0.1}}, "worker_device": device,
            "protocols_requested": sorted({c["protocol"] for c in cells})}


def test_agreeing_order_has_no_inversions():
    checks = report.ordering_check(_results([_cell("a", 1.0, 0.01, 1.0), _cell("b", 2.0, 0.01, 2.5)]))
    assert len(checks) == 1 and checks[0]["agree"] and checks[0]["measured_order"] == ["a", "b"]


def test_inversions_are_explained_by_noise_tie_or_unmodelled_cost():
    noisy = report.ordering_check(_results([_cell("a", 1.0, 0.5, 2.0), _cell("b", 1.2, 0.5, 1.0)]))[0]
    assert not noisy["agree"] and "noise" in noisy["inversions"][0]["explanation"]
    tie = report.ordering_check(_results([_cell("a", 1.0, 0.01, 1.1), _cell("b", 1.2, 0.01, 1.0)]))[0]
    assert "nearly ties" in tie["inversions"][0]["explanation"]
    far = report.ordering_check(_results([_cell("a", 1.0, 0.01, 3.0, 5), _cell("b", 2.0, 0.01, 1.0, 50)]))[0]
    text = far["inversions"][0]["explanation"]
    assert "leaves out" in text and "5 vs 50 messages" in text


def test_tracking_summary_and_rank_correlation():
    cells = [_cell("a", s, 0.0, s / 2) for s in (1.0, 2.0, 4.0)]
    (row,) = report.tracking_summary(_results(cells))
    assert row["cells"] == 3 and row["ratio_median"] == 2.0 and abs(row["spearman"] - 1.0) < 1e-9
    assert abs(report.spearman([1, 2, 3], [3, 2, 1]) + 1.0) < 1e-9
