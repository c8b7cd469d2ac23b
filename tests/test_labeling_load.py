"""20 annotators submit 1,000 responses at once through the API (the UI's submit call), on loopback:
none is lost or mixed up. The p95 latency is printed; the timed comparison lives in bench/bench_search.py."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for bench/
from bench.bench_search import load_test  # noqa: E402

pytestmark = pytest.mark.server


def test_twenty_annotators_submit_concurrently_and_nothing_is_lost(labeling_server):
    result = load_test(labeling_server["url"], labeling_server["api_key"], annotators=20, records=50)
    print(
        f"\n20 annotators, {result['sent']} responses: p50 {result['p50_ms']:.0f} ms, p95 {result['p95_ms']:.0f} ms, "
        f"{result['responses_per_s']:.0f} responses/s"
    )
    assert result["errors"] == []
    assert result["sent"] == 1000 and result["stored"] == 1000 and result["mismatched"] == 0
