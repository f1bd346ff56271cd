"""`blt-bench paper`: the paper's bandwidth arithmetic (Eq. 8) recomputed from its own tables, next to this
model's counters for the same settings, so the gap to the paper is one table.

Eq. 8: BW = b·(N_dec·P_dec + N_enc·(P_enc + P_glob)) / 1e9 GB with b = 2 (16-bit weights). Per generated
byte the paper's rows give N_dec/L and N_enc/L; its BLT-D steps per block are N_dec/N_enc and its BLT-DV
steps s = N_dec/(N_enc/2) − 1 (two E+G and s+1 decoder calls per iteration). This model's numbers are measured
with greedy decoding on held-out prompts at the paper's length L; its saving is given with its own
parameter counts and again with the paper's 3B counts (what these counts would save at the paper's scale).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastblt.benchmarks import paper_tables
from fastblt.benchmarks.common import Setting, fmt, heldout_prompts, parse_setting, progress, summary, table, usable
from fastblt.benchmarks.decode import measure
from fastblt.graphs.params import param_counts


@dataclass(frozen=True)
class PaperConfig:
    settings: tuple[Setting, ...]
    task: str = "HumanEval"
    prompts: int = 2
    new_bytes: int = 512
    context: int = 1024

    def to_dict(self) -> dict:
        return {"settings": [s.spec for s in self.settings], "task": self.task, "prompts": self.prompts,
                "new_bytes": self.new_bytes, "context": self.context}


def eq8(n_dec: float, n_enc: float, p: dict) -> float:
    return 2 * (n_dec * p["decoder"] + n_enc * (p["encoder"] + p["global"])) / 1e9


def spec_of(row: dict) -> str | None:
    """The `blt-bench` setting of a paper row (AR, BLT-S k, BLT-D/BLT-DV B × rule)."""
    if row["mode"] == "AR":
        return "ar"
    if row["mode"] == "BLT-S":
        return f"blts/{row['setting']}"
    b = row["model"].rsplit("-", 1)[1]
    rule, _, value = row["setting"].partition(" ")  # "conf α=0.7", "EB γ=1.0", "one-step"
    opt = "one_step" if rule == "one-step" else f"{'alpha' if rule == 'conf' else 'gamma'}={value.split('=')[1]}"
    return f"{row['mode'].replace('-', '').lower()}/B={b}/{opt}"


def check_tables() -> dict:
    """Eq. 8 over every transcribed row against the paper's BW column."""
    rows, per_table = [], {}
    for r in paper_tables.rows():
        bw = eq8(r["n_dec"], r["n_enc"], paper_tables.PARAMS[r["size"]])
        err = 100 * (bw / r["bw_gb"] - 1)
        rows.append({**r, "spec": spec_of(r), "bw_eq8": bw, "error_pct": err})
        t = per_table.setdefault(f"{r['size']} {r['task']}", {"rows": 0, "max_abs_error_pct": 0.0})
        t["rows"] += 1
        t["max_abs_error_pct"] = max(t["max_abs_error_pct"], abs(err))
    return {"rows": rows, "tables": per_table}


def paper_per_byte(r: dict) -> dict:
    steps = None
    if r["mode"] == "BLT-D":
        steps = r["n_dec"] / r["n_enc"]
    elif r["mode"] == "BLT-DV":
        steps = r["n_dec"] / (r["n_enc"] / 2) - 1
    return {"n_dec_per_byte": r["n_dec"] / r["length"], "n_enc_per_byte": r["n_enc"] / r["length"],
            "acceptance": None if r["acceptance"] is None else r["acceptance"] / 100, "steps_per_block": steps,
            "saving": None if r["bw_saving_pct"] is None else r["bw_saving_pct"] / 100}


def run(target, cfg: PaperConfig, quiet: bool = False) -> dict:
    check = check_tables()
    gen = target.load()
    settings = usable(list(cfg.settings), gen)
    prompts = heldout_prompts(cfg.prompts, cfg.context)
    bar = progress(len(settings) * len(prompts), "paper counters", quiet)
    ours = {}
    for s in settings:
        runs = []
        for p in prompts:
            runs.append(measure(gen, p, s, cfg.new_bytes)[0])
            bar.update()
        ours[s.spec] = {"label": s.label,
                        **{f"{k}_per_byte": summary(r[k] / r["new_bytes"] for r in runs if r["new_bytes"])["median"]
                           for k in ("n_enc", "n_dec", "actual_n_enc", "actual_n_dec")},
                        "acceptance": summary(r["acceptance"] for r in runs)["median"],
                        "steps_per_block": summary(r["steps_per_block"] for r in runs)["median"]}
    bar.close()
    own = param_counts(gen.config)
    own = {"encoder": own["encoder"], "global": own["global"], "decoder": own["decoder"]}
    ar = ours.get("ar")
    for o in ours.values():
        for name, params in (("own", own), ("3B", paper_tables.PARAMS["3B"])):
            if ar and o["n_dec_per_byte"] is not None:
                base = eq8(ar["n_dec_per_byte"], ar["n_enc_per_byte"], params)
                o[f"saving_{name}_params"] = 1 - eq8(o["n_dec_per_byte"], o["n_enc_per_byte"], params) / base
    gen.close()
    return {"config": cfg.to_dict(), "target": target.describe(gen), "params": own, "eq8_check": check["tables"],
            "paper_rows": check["rows"], "ours": ours}


def render(section: dict) -> str:
    task = section["config"]["task"]
    tables = section["eq8_check"]
    worst = max(t["max_abs_error_pct"] for t in tables.values())
    out = [f"Eq. 8 recomputed from N_dec and N_enc of all {sum(t['rows'] for t in tables.values())} transcribed rows "
           f"of the paper's Tables 3–10 (1B: P_enc 19M, P_glob 1.28B, P_dec 160M; 3B: 26M, 2.82B, 160M) matches "
           f"the paper's BW column within {worst:.1f}% (NFEs are rounded averages in the tables):", "",
           table(["table", "rows", "max abs. Δ %"], [[k, t["rows"], f"{t['max_abs_error_pct']:.2f}"]
                                                  for k, t in tables.items()])]
    paper = {(r["size"], r["spec"]): paper_per_byte(r) for r in section["paper_rows"] if r["task"] == task}
    p = section["params"]
    out += ["", f"Per generated byte: the paper's {task} rows (3B and 1B, L = "
            f"{next((r['length'] for r in section['paper_rows'] if r['task'] == task), '?')}) next to this model "
            f"({section['target']}, P_enc {p['encoder'] / 1e6:.2f}M, P_glob {p['global'] / 1e6:.2f}M, P_dec "
            f"{p['decoder'] / 1e6:.2f}M; greedy, {section['config']['prompts']} held-out prompts of "
            f"{section['config']['context']} bytes, {section['config']['new_bytes']} new bytes; medians). N_enc / "
            "N_dec in the paper's accounting; BW saving against AR by Eq. 8.", ""]
    body = []
    for spec, o in section["ours"].items():
        p3, p1 = paper.get(("3B", spec), {}), paper.get(("1B", spec), {})
        body.append([o["label"],
                     f"{fmt(p3.get('n_enc_per_byte'), 3)} / {fmt(p3.get('n_dec_per_byte'), 3)}",
                     fmt(p3.get("acceptance"), 2), fmt(p3.get("steps_per_block"), 2), _pct(p3.get("saving")),
                     _pct(p1.get("saving")),
                     f"{fmt(o['n_enc_per_byte'], 3)} / {fmt(o['n_dec_per_byte'], 3)}", fmt(o["acceptance"], 2),
                     fmt(o["steps_per_block"], 2), _pct(o.get("saving_own_params")),
                     _pct(o.get("saving_3B_params"))])
    out.append(table(["setting", "paper 3B N_enc / N_dec per byte", "paper acc.", "paper steps/block",
                      "paper 3B BW saving", "paper 1B BW saving", "this model N_enc / N_dec per byte", "acc.",
                      "steps/block", "BW saving (own P)", "BW saving (3B P)"], body))
    return "\n".join(out)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%".replace("-", "−")


DEFAULT_SETTINGS = tuple(parse_setting(s) for s in (
    "ar", "blts/k=4", "blts/k=8", "blts/k=16", "bltd/B=4/alpha=0.7", "bltd/B=8/alpha=0.7", "bltd/B=16/alpha=0.7",
    "bltd/B=8/gamma=1.0", "bltdv/B=4/one_step", "bltdv/B=8/one_step", "bltdv/B=16/one_step", "bltdv/B=8/alpha=0.3"))
