"""Per-request counters in the paper's accounting and in the actual one (docs/architecture.md).

Paper: N_enc counts encoder+global (E+G) invocations as the paper does (AR: one per patch; BLT-D: one per
block; BLT-S/BLT-DV: two per iteration), N_dec counts decoder calls (AR: one per byte; BLT-D: diffusion steps;
BLT-S: k drafts + 1 verify; BLT-DV: s steps + 1 verify). Actual: the graph calls this runtime really made
(global calls for N_enc; decoder_step, decoder_block and fused draft_step calls for N_dec), plus what the paper
leaves out: entropy-model and encoder byte steps. Bandwidth = 2·(N_dec·P_dec + N_enc·(P_enc+P_glob))/1e9
(16-bit weights; hash tables excluded from P_enc: they are lookups), with P counted from the loaded model's config.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from fastblt.graphs.params import param_counts


def bandwidth_gb(params: dict, n_enc: int, n_dec: int) -> float:
    """The paper's bandwidth: 2·(N_dec·P_dec + N_enc·(P_enc+P_glob))/1e9 (16-bit weights)."""
    return 2 * (n_dec * params["decoder"] + n_enc * (params["encoder"] + params["global"])) / 1e9


@dataclass
class Counters:
    mode: str
    n_dec: Counter = field(default_factory=Counter)  # by purpose: ar_step, diffusion_step, draft_step, verify, commit
    paper_n_enc: int = 0
    paper_n_dec: int = 0
    iterations: int = 0
    bytes_drafted: int = 0
    bytes_accepted: int = 0
    steps_per_block: list = field(default_factory=list)
    accepted_per_iteration: list = field(default_factory=list)
    exact: bool = True  # False when a sampled verification is only approximately lossless

    def report(self, session, new_bytes: int, prefill_calls: dict | None = None,
               prefill_seconds: dict | None = None) -> dict:
        params = param_counts(session.config)
        calls = dict(session.calls)
        actual_dec = sum(calls.get(g, 0) for g in ("decoder_step", "decoder_block", "draft_step"))
        actual_enc = calls.get("global", 0)

        def bandwidth(n_enc: int, n_dec: int) -> float:
            return bandwidth_gb(params, n_enc, n_dec)

        out = {
            "n_enc": self.paper_n_enc, "n_dec": self.paper_n_dec,
            "bandwidth_gb": bandwidth(self.paper_n_enc, self.paper_n_dec),
            "actual": {"n_enc": actual_enc, "n_dec": actual_dec, "bandwidth_gb": bandwidth(actual_enc, actual_dec),
                       "n_dec_by_purpose": dict(self.n_dec)},
            "entropy_lm_byte_steps": session.byte_steps["patcher"],
            "encoder_byte_steps": session.byte_steps["encoder"],
            "forced_patch_closures": session.forced_closures,
            "graph_calls": calls,
            "decode_graph_calls": {g: n - (prefill_calls or {}).get(g, 0) for g, n in calls.items()},
            "graph_ms": {g: round(1000 * s, 3) for g, s in session.seconds.items()},
            "decode_graph_ms": {g: round(1000 * (s - (prefill_seconds or {}).get(g, 0.0)), 3)
                                for g, s in session.seconds.items()},
            "params": params,
            "new_bytes": new_bytes,
            "iterations": self.iterations,
            "exact": self.exact,
        }
        if self.bytes_drafted:
            out.update(bytes_drafted=self.bytes_drafted, bytes_accepted=self.bytes_accepted,
                       acceptance=self.bytes_accepted / self.bytes_drafted,
                       accepted_per_iteration=self.accepted_per_iteration)
        if self.steps_per_block:
            out["steps_per_block"] = self.steps_per_block
        return out
