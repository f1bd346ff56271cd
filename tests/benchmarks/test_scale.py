"""`blt-bench scale`'s measuring parts on the tiny bundle: per-graph latency percentiles, read bounds from the
manifest's weight bytes and a measured bandwidth, the paper's regime, and the projection's formula (which,
given a run's own latencies, must reproduce that run's own per-byte cost)."""

from __future__ import annotations

import pytest

from fastblt.benchmarks.scale import generate_all, memory_bandwidth, projection, regime, render

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tiny_bundle):
    settings = "ar,blts/k=4,bltd/B=4/alpha=0.7,bltdv/B=4/alpha=0.7,bltd/B=64/alpha=0.7"
    return generate_all(str(tiny_bundle), "fp32", 12, settings)


def test_generate_all_times_every_graph_and_checks_identity(run):
    assert run["modes"]["bltd/B=64/alpha=0.7"] == {"skipped": "the bundle has no diffusion decoder for this block size"}
    assert run["greedy_equal_to_ar"] == {"blts/k=4": True, "bltdv/B=4/alpha=0.7": True}
    lat = run["latency_ms"]
    assert {"patcher", "encoder", "global", "decoder_step"} <= set(lat)
    for by in lat.values():
        for r in by.values():
            assert 0 < r["p50"] <= r["p90"] and r["calls"] >= 1
    assert run["memory_bandwidth_gb_s"] > 0.1
    assert all(v > 0 for v in run["read_bound_ms"].values()) and "global" in run["read_bound_ms"]


def test_regime_and_projection(run):
    r = regime(run)
    assert r["ratio"] == pytest.approx((r["encoder_plus_global_ms"]) / r["decoder_step_ms"], rel=0.1)  # both rounded
    proj = projection(run, run)  # the run's own latencies: projection and check are the same number
    assert "Σ_g" in proj["formula"]
    ar = proj["modes"]["ar"]
    assert ar["projected_speedup_at_scale"] == ar["check_projected_speedup_small"] == 1.0
    for spec, row in proj["modes"].items():
        assert row["projected_speedup_at_scale"] == row["check_projected_speedup_small"], spec
        assert row["measured_speedup_small"] > 0
    slower = {m: {**v, "graph_ms": {g: {**x, "mean_ms": 2 * x["mean_ms"]} for g, x in v["graph_ms"].items()}}
              if "graph_ms" in v else v for m, v in run["modes"].items()}
    assert projection({**run, "modes": slower}, run)["modes"]["blts/k=4"]["projected_ms_per_byte_at_scale"] == \
        pytest.approx(2 * projection(run, run)["modes"]["blts/k=4"]["projected_ms_per_byte_at_scale"], rel=0.01)


def test_render_quotes_the_results(run):
    results = {"date": "2026-12-06", "machine": "test", "commit": "abc", "preset": "tiny", "stages": {
        "build": {"command": "/x/blt-export build CKPT", "seconds": 3.0, "peak_rss_gb": 1.0, "date": "2026-12-06"}},
        "graph_bytes": {"fp32": 1000, "int4": 250}, "generate-fp32": run, "regime": {"fp32": regime(run)},
        "projection": {"fp32": projection(run, run)}}
    text = render(results)
    assert "| int4 | 0.00 GB | 25% |" in text and "`blt-export build CKPT`" in text
    assert "| fp32 | global | 1 |" in text and "a projection, not a measurement" in text


def test_memory_bandwidth_is_measured():
    assert 1e8 < memory_bandwidth(0.05) < 1e12
