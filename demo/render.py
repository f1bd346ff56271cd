"""HTML for the demo's panels: per-mode output coloured by origin with live counters, the legend, the summary
table against AR, the patcher's entropy plot (SVG) and the diffusion replay. Plain strings, no gradio."""

from __future__ import annotations

import html
import math

from fastblt.demo.race import LABELS, Block, Track

CSS = """
.blt-panel { font-size: 13px; }
.blt-head { display: flex; justify-content: space-between; align-items: baseline; margin-bottom: 4px; }
.blt-head b { font-size: 15px; }
.blt-stats { display: flex; flex-wrap: wrap; gap: 2px 12px; margin: 4px 0 6px; }
.blt-stats span { white-space: nowrap; } .blt-stats i { font-style: normal; opacity: 0.7; }
.blt-out { white-space: pre-wrap; word-break: break-all; font-family: ui-monospace, monospace; font-size: 12.5px;
  line-height: 1.45; max-height: 420px; overflow-y: auto; margin: 0; padding: 6px; border-radius: 6px;
  background: #fafafa; color: #111; border: 1px solid #ddd; }
.blt-prompt { color: #888; }
.blt-gen span { color: #111; border-radius: 2px; }
.blt-error { color: #b00020; font-weight: 600; }
.blt-legend span.sw { display: inline-block; padding: 0 6px; margin: 0 10px 2px 0; border-radius: 3px; color: #111; }
.blt-summary table { border-collapse: collapse; font-size: 13px; }
.blt-summary td, .blt-summary th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
.blt-summary td:first-child, .blt-summary th:first-child { text-align: left; }
.blt-cells { display: flex; flex-wrap: wrap; gap: 4px; font-family: ui-monospace, monospace; }
.blt-cell { width: 64px; border: 1px solid #bbb; border-radius: 4px; text-align: center; padding: 4px 0;
  color: #111; }
.blt-cell small { display: block; font-size: 10.5px; opacity: 0.75; }
.blt-cell.new { outline: 3px solid #5b2a86; }
"""

AR_BG, DRAFT_BG, FIX_BG, KNOWN_BG, MASK_BG = "#e3ecf7", "#b8e6c1", "#ffc98f", "#eeeeee", "#4a4a4a"


def diffusion_bg(step: int) -> str:
    """Purple, darker for later steps (step 1 lightest)."""
    return f"hsl(275, 65%, {max(88 - 6 * (step - 1), 58)}%)"


def origin_style(origin: tuple[str, int]) -> tuple[str, str]:
    kind, step = origin
    if kind == "draft":
        return DRAFT_BG, "accepted draft" + (f" (unmasked at diffusion step {step})" if step else "")
    if kind == "fix":
        return FIX_BG, "correction / bonus byte from verification"
    if kind == "diffusion":
        return diffusion_bg(step), f"unmasked by diffusion at step {step} of its block"
    return AR_BG, "plain AR step"


def legend(block_steps: int = 4) -> str:
    items = [(AR_BG, "plain AR step (one decoder call per byte)"), (DRAFT_BG, "accepted draft (BLT-S, BLT-DV)"),
             (FIX_BG, "correction / bonus byte after verification")]
    items += [(diffusion_bg(s), f"diffusion step {s}") for s in range(1, block_steps + 1)]
    swatches = "".join(f'<span class="sw" style="background:{bg}">{html.escape(t)}</span>' for bg, t in items)
    return f'<div class="blt-legend"><b>How each byte was made:</b> {swatches}<span>… later steps darker</span></div>'


def _stat(name: str, value: str) -> str:
    return f"<span><i>{name}</i> {value}</span>"


def panel(mode: str, track: Track | None, prompt: str, state: str | None = None) -> str:
    """One mode's panel; `data-state` is idle, waiting, running, done or error (browser tests wait on it)."""
    label = LABELS[mode]
    if track is None:
        state = state or "idle"
        note = "not ticked" if state == "idle" else "waiting…"
        return (f'<div class="blt-panel" data-mode="{mode}" data-state="{state}"><div class="blt-head"><b>{label}'
                f'</b><span>{note}</span></div><pre class="blt-out"><span class="blt-gen"></span></pre></div>')
    state = "error" if track.error else "done" if track.result else "running" if track.started else "waiting"
    stats = [_stat("bytes", str(len(track.data))), _stat("B/s", f"{track.bytes_per_s:,.0f}"),
             _stat("ms", f"{1000 * track.elapsed:,.0f}"), _stat("N_enc", str(track.n_enc)),
             _stat("N_dec", str(track.n_dec)), _stat("bandwidth", f"{track.bandwidth_gb:.3f} GB")]
    if mode in ("blts", "bltdv"):
        acc = f"{track.accepted / track.drafted:.2f}" if track.drafted else "–"
        stats.append(_stat("acceptance", acc))
    if mode in ("bltd", "bltdv"):
        steps = track.steps_per_block()
        stats.append(_stat("steps/block", f"{sum(steps) / len(steps):.2f}" if steps else "–"))
    status = {"done": f"done ({track.result.stop_reason})" if track.result else "", "error": "failed",
              "running": "generating…", "waiting": "waiting…"}[state]
    spans = []
    for text, origin in track.segments():
        bg, title = origin_style(origin)
        spans.append(f'<span style="background:{bg}" title="{title}">{html.escape(text)}</span>')
    error = f'<div class="blt-error">{html.escape(track.error)}</div>' if track.error else ""
    return (f'<div class="blt-panel" data-mode="{mode}" data-state="{state}"><div class="blt-head"><b>{label}</b>'
            f'<span>{status}</span></div><div class="blt-stats">{"".join(stats)}</div>{error}'
            f'<pre class="blt-out"><span class="blt-prompt">{html.escape(prompt)}</span>'
            f'<span class="blt-gen">{"".join(spans)}</span></pre></div>')


def summary(tracks: dict[str, Track], schedule: str) -> str:
    """Each mode against AR: speed-up (decode bytes/s), bandwidth saving, and whether the text equals AR's."""
    ar = tracks.get("ar")
    base = ar.result if ar is not None and ar.result is not None else None
    rows = []
    for mode, t in tracks.items():
        r = t.result
        if r is None:
            rows.append(f"<tr><td>{LABELS[mode]}</td><td colspan=9>{html.escape(t.error or 'not finished')}</td></tr>")
            continue
        c = r.counters
        speed = f"{r.bytes_per_s / base.bytes_per_s:.2f}×" if base and base.bytes_per_s > 0 else "–"
        per_byte = c["bandwidth_gb"] / max(len(r.bytes), 1)
        base_per_byte = base.counters["bandwidth_gb"] / max(len(base.bytes), 1) if base else 0.0
        saving = f"{100 * (1 - per_byte / base_per_byte):.0f}%" if base and base_per_byte > 0 else "–"
        same = ("yes" if r.bytes == base.bytes else "no") if base else "–"
        acc = f"{c['acceptance']:.2f}" if "acceptance" in c else "–"
        spb = c.get("steps_per_block")
        steps = f"{sum(spb) / len(spb):.2f}" if spb else "–"
        rows.append(f"<tr><td>{LABELS[mode]}</td><td>{len(r.bytes)}</td><td>{r.bytes_per_s:,.0f}</td>"
                    f"<td>{speed}</td><td>{c['n_enc']}</td><td>{c['n_dec']}</td><td>{c['bandwidth_gb']:.4f}</td>"
                    f"<td>{saving}</td><td>{acc}</td><td>{steps}</td><td>{same}</td></tr>")
    note = ("modes ran side by side and shared the CPU" if schedule == "side by side"
            else "modes ran one after another")
    return ('<div class="blt-summary"><table><tr><th>mode</th><th>bytes</th><th>B/s</th><th>speed-up vs AR</th>'
            "<th>N_enc</th><th>N_dec</th><th>bandwidth GB</th><th>saving per byte vs AR</th><th>acceptance</th>"
            f"<th>steps/block</th><th>same text as AR</th></tr>{''.join(rows)}</table>"
            f"<small>B/s excludes the prompt's prefill; {note}. Bandwidth: 2·(N_dec·P_dec + N_enc·(P_enc+P_glob))"
            "/1e9 GB, the paper's accounting.</small></div>")


def _glyph(b: int) -> str:
    return {10: "⏎", 32: "␣", 9: "⇥"}.get(b, chr(b) if 33 <= b < 127 else f"{b:02x}")


def entropy_plot(view: dict, prompt_bytes: int, width: int = 960, height: int = 230) -> str:
    """SVG: the patcher's entropy per byte (nats), θ dashed, each patch start a vertical tick, the prompt
    shaded; bytes written under the axis when they fit."""
    ent, starts, theta = view["entropies"], view["starts"], view["threshold"]
    n = len(ent)
    if not n:
        return "<div>no bytes to show</div>"
    left, top, bottom = 44, 14, 40
    w, h = width - left - 8, height - top - bottom
    top_val = max(max(ent), theta) * 1.1 or 1.0
    dx = w / n

    def x(i: float) -> float:
        return left + (i + 0.5) * dx

    def y(v: float) -> float:
        return top + h * (1 - v / top_val)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'style="background:#fff;font-family:ui-monospace,monospace;font-size:10px">',
             f'<rect x="{left}" y="{top}" width="{min(prompt_bytes, n) * dx:.1f}" height="{h}" fill="#f1f1f1"/>']
    for s in starts:
        parts.append(f'<line x1="{left + s * dx:.1f}" x2="{left + s * dx:.1f}" y1="{top}" y2="{top + h}" '
                     'stroke="#2a7ab8" stroke-opacity="0.45"/>')
    pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ent))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#5b2a86" stroke-width="1.4"/>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(theta):.1f}" y2="{y(theta):.1f}" stroke="#d0342c" '
                 'stroke-dasharray="5,3"/>')
    parts.append(f'<text x="{left + w - 4}" y="{y(theta) - 3:.1f}" text-anchor="end" fill="#d0342c">'
                 f'θ = {theta:.3f}</text>')
    for v in range(0, math.ceil(top_val) + 1):
        if v <= top_val:
            parts.append(f'<text x="{left - 4}" y="{y(v) + 3:.1f}" text-anchor="end">{v}</text>')
    parts.append(f'<line x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}" stroke="#333"/>')
    if dx >= 7:
        data = view.get("bytes", b"")
        for i, b in enumerate(data[:n]):
            parts.append(f'<text x="{x(i):.1f}" y="{top + h + 12}" text-anchor="middle">{html.escape(_glyph(b))}'
                         "</text>")
    parts.append(f'<text x="{left}" y="{height - 4}">entropy of each byte\'s prediction (nats); blue ticks: patch '
                 f"starts ({len(starts)} patches over {n} bytes); grey: the prompt</text></svg>")
    return f'<div class="blt-patcher">{"".join(parts)}</div>'


def replay(block: Block | None, step: int, mode: str) -> str:
    """Block rows at diffusion step `step` (0: before the first step); for BLT-DV one step past the last shows
    the verification. Known rows grey, MASK dark, rows filled at this step outlined, with confidences."""
    if block is None:
        return "<div>Run BLT-D or BLT-DV to replay their diffusion blocks.</div>"
    filled = block.by_position()
    known = block.known
    context = block.context
    cells = []
    for row in range(block.size):
        if row < known:
            back = known - row
            glyph = _glyph(context[-back]) if back <= len(context) else "BOS"
            cells.append(f'<div class="blt-cell" style="background:{KNOWN_BG}">{html.escape(glyph)}'
                         "<small>known</small></div>")
        elif block.exact is not None and row == known:
            b = block.exact - 4
            glyph = _glyph(b) if 0 <= b < 256 else "EOS"
            cells.append(f'<div class="blt-cell" style="background:{FIX_BG}">{html.escape(glyph)}'
                         "<small>exact</small></div>")
        elif row in filled and filled[row][0] <= step:
            s, conf, byte_id = filled[row]
            b = byte_id - 4
            glyph = _glyph(b) if 0 <= b < 256 else "EOS"
            verified = ""
            if block.accepted is not None and step > len(block.steps):
                ok = row - known - 1 < block.accepted
                verified = " ✓" if ok else " ✗"
            new = " new" if s == step else ""
            cells.append(f'<div class="blt-cell{new}" style="background:{diffusion_bg(s)}">{html.escape(glyph)}'
                         f"<small>s{s} · {conf:.2f}{verified}</small></div>")
        else:
            cells.append(f'<div class="blt-cell" style="background:{MASK_BG};color:#eee">▒<small>MASK</small>'
                         "</div>")
    if step == 0:
        caption = "before the first step: the masked rows are MASK"
    elif step > len(block.steps):
        caption = (f"verification: {block.accepted} of {block.size - known - 1} drafted bytes accepted "
                   "(✓), the first rejected one and everything after it dropped (✗)")
    else:
        e = block.steps[step - 1]
        confs = ", ".join(f"{c:.2f}" for c in e.get("confidences") or [])
        caption = f"step {step} of {len(block.steps)}: filled rows {e['positions']} (confidence {confs})"
    return (f'<div class="blt-replay" data-mode="{mode}"><div class="blt-cells">{"".join(cells)}</div>'
            f"<p>{html.escape(caption)}</p></div>")
