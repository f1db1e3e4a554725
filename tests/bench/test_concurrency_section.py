"""The bench's concurrency section: measured rows become a report table; failures are reported."""

from __future__ import annotations

from blindtrain.bench import concurrency


def test_the_section_measures_both_worker_counts_and_reports_the_ratio():
    result = concurrency.measure(transports=("inproc",), hidden=(16,), batch=4, steps=1, warmup=1, echo=lambda *_: None)
    row = result["rows"][0]
    assert row["transport"] == "inproc" and row["workers1"]["wait_s"] > 0 and row["workers2"]["wait_s"] > 0
    assert row["wait_ratio"] == row["workers2"]["wait_s"] / row["workers1"]["wait_s"]
    lines = concurrency.markdown(result)
    assert lines[0].startswith("## Concurrent workers") and any(line.startswith("| inproc |") for line in lines)


def test_a_transport_that_fails_is_reported_not_raised():
    result = concurrency.measure(transports=("no-such-transport",), hidden=(16,), batch=4, steps=1,
                                 echo=lambda *_: None)
    assert "failed" in result["rows"][0]
    assert any("failed: " in line for line in concurrency.markdown(result))
    assert concurrency.markdown(None) == []
