"""Per-mention traces of the reasoning graph, built from LangGraph's own stream.

``traced_invoke`` runs the graph with ``stream_mode="updates"``: each chunk is one node visit (its
decision events ride in the update). What nodes emit beyond the state (full LLM prompts and raw
replies, tool outputs) goes to a collector and joins the visit of the node that emitted it. The
final state is the input with every update applied through the graph's own channels (reducers such
as ``path`` and ``events`` add up, the others keep the last value), which is what LangGraph's
``values`` mode would give, without copying the state after every step. The trace lists the node
visits in order, each with the edge taken next and why. It holds no settings and no environment,
so no key can enter it.
"""

from __future__ import annotations

import html
import json
from typing import Any, Callable

from .graph.trace_events import COLLECTOR

TRACE_SCHEMA = "i2cr.trace/1"


def _edge_reason(step: dict[str, Any], nxt: str) -> str:
    ev = {e.get("type"): e for e in step.get("events", [])}
    node = step["node"]
    if node == "prepare":
        if nxt == "final":
            return "no candidates"
        return f"image {step.get('image_status')}; IAV mode {step.get('iav_mode') or 'none'}"
    if node == "tes":
        return f"check the choice {step.get('choice')!r}"
    if node == "icr":
        e = ev.get("icr", {})
        d = e.get("decision")
        if d == "reject_and_rechoose":
            return f"ICR {e.get('score')} < {e.get('threshold')}: rejected, choose again"
        if d == "exhausted_keep_best":
            return f"reflections exhausted: keep best ICR score ({e.get('kept')})"
        if d == "nil_not_checked":
            return "NIL chosen"
        if nxt == "final":
            return f"ICR {e.get('score')} >= {e.get('threshold')}; nothing visual to verify"
        return f"ICR {e.get('score')} >= {e.get('threshold')}: verify against the image"
    if node == "iav":
        e = ev.get("iav", {})
        if e.get("decision") == "pass":
            return f"IAV {e.get('score')} >= {e.get('threshold')} ({e.get('mode')}): accept"
        if nxt == "vif":
            return f"IAV {e.get('score')} < {e.get('threshold')} ({e.get('mode')}): ask for a visual clue"
        return f"IAV failed ({e.get('score')} vs {e.get('threshold')}) and no tool or round left"
    if node == "vif":
        t = ev.get("tool_call", {})
        if nxt == "tes":
            return f"clue from {t.get('tool')}: choose again with it"
        if nxt == "vif":
            return f"{t.get('tool') or 'tool'} gave no usable clue: next tool"
        return "no tool left"
    return ""


_SUMMARY_KEYS = ("choice", "icr_score", "icr_decision", "iav_score", "iav_passed", "iav_mode",
                 "image_status", "image_reason", "round", "excluded", "tools_available",
                 "answer", "final_reason", "last_clue_ok")


def traced_invoke(graph: Any, inp: dict[str, Any], *, context: Any, config: dict | None = None,
                  on_event: Callable[[str, dict[str, Any]], None] | None = None,
                  with_prompts: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the graph; return (final state, trace)."""
    steps: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    observer = on_event

    def notify(kind: str, ev: dict[str, Any]) -> None:
        nonlocal observer
        if observer is None:
            return
        try:
            observer(kind, ev)
        except Exception:  # noqa: BLE001 - a broken observer (e.g. a closed pipe) must not
            observer = None  # fail the mention; stop telling it

    channels = getattr(graph, "channels", {}) or {}
    state: dict[str, Any] = dict(inp)
    token = COLLECTOR.set(pending)
    try:
        for chunk in graph.stream(inp, context=context, config=config, stream_mode="updates"):
            for node, upd in chunk.items():
                if node.startswith("__"):
                    continue
                upd = upd or {}
                for k, v in upd.items():
                    op = getattr(channels.get(k), "operator", None)
                    state[k] = op(state[k], v) if op is not None and k in state else v
                mine = [c for c in pending if c.get("node") in (None, node)]
                pending[:] = [c for c in pending if c.get("node") not in (None, node)]
                if not with_prompts:
                    mine = [{k: v for k, v in c.items() if k != "prompt"} for c in mine]
                for c in mine:
                    notify("custom", c)
                step = {"step": len(steps), "node": node,
                        **{k: upd[k] for k in _SUMMARY_KEYS if k in upd},
                        "events": list(upd.get("events") or []), "stream": mine}
                steps.append(step)
                notify("node", step)
    finally:
        COLLECTOR.reset(token)
    final = state
    for i, s in enumerate(steps):
        nxt = steps[i + 1]["node"] if i + 1 < len(steps) else "__end__"
        s["edge"] = {"to": nxt, "why": _edge_reason(s, nxt) if nxt != "__end__" else "done"}
    return final, {"schema": TRACE_SCHEMA, "steps": steps}


# --- rendering ---------------------------------------------------------------------------------

def _short(x: Any, n: int = 90) -> str:
    s = " ".join(str(x).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def render_tree(rec: dict[str, Any]) -> str:
    """A readable tree of one mention's decisions."""
    gold = rec.get("gold")
    verdict = "" if gold is None else ("  ✓" if rec.get("correct") else f"  ✗ (gold: {gold})")
    lines = [f"{rec['id']}  {rec.get('mention')!r} → {rec.get('answer')!r}{verdict}  "
             f"[{rec.get('final_reason')}]"]
    steps = (rec.get("trace") or {}).get("steps") or []
    for i, s in enumerate(steps):
        last = i == len(steps) - 1
        head = "└─" if last else "├─"
        pad = "   " if last else "│  "
        node = s["node"]
        ev = {e.get("type"): e for e in s.get("events", [])}
        if node == "prepare":
            desc = (f"image {s.get('image_status')}" + (f" ({s.get('image_reason')})"
                    if s.get("image_reason") and s.get("image_status") != "absent" else "")
                    + f"; IAV mode {s.get('iav_mode') or 'none'}; tools "
                    f"{', '.join(s.get('tools_available') or []) or 'none'}")
        elif node == "tes":
            e = ev.get("tes_answer", {})
            desc = f"→ {s.get('choice')!r} ({e.get('method', '?')})"
            if e.get("top"):
                desc += "  top: " + ", ".join(f"{t['name']} {t['score']}" for t in e["top"])
        elif node == "icr":
            e = ev.get("icr", {})
            desc = f"{e.get('choice')!r} cos {e.get('score')} vs α {e.get('threshold')}: {e.get('decision')}"
        elif node == "iav":
            e = ev.get("iav", {})
            desc = f"{e.get('choice')!r} {e.get('mode')} {e.get('score')} vs β {e.get('threshold')}: {e.get('decision')}"
        elif node == "vif":
            e = ev.get("tool_call", {})
            desc = (f"tool {e.get('tool')} ({e.get('how')}, {e.get('backend')}) → "
                    f"{_short(e.get('result') or e.get('error') or '∅', 70)!r}")
        else:
            desc = f"{s.get('answer')!r} ({s.get('final_reason')})"
        lines.append(f"{head} {node}: {desc}")
        for c in s.get("stream", []):
            if c.get("type") == "llm_call":
                lines.append(f"{pad}   llm: {_short(c.get('raw') or c.get('error'), 80)!r}"
                             f" ({c.get('tokens') or '?'} tokens, {c.get('latency_s', '?')}s)")
        if s.get("edge") and s["edge"]["to"] != "__end__":
            lines.append(f"{pad}   ⇢ {s['edge']['to']}: {s['edge']['why']}")
    return "\n".join(lines)


def render_mermaid(rec: dict[str, Any], graph: Any) -> str:
    """The graph as Mermaid with the nodes this mention visited highlighted and the path it took
    written out as numbered edges."""
    base = graph.get_graph().draw_mermaid().rstrip()
    steps = (rec.get("trace") or {}).get("steps") or []
    visited = sorted({s["node"] for s in steps})
    out = [base, "\tclassDef visited fill:#ffd43b,stroke:#e67700,stroke-width:2px"]
    if visited:
        out.append(f"\tclass {','.join(visited)} visited")
    out.append(f"\t%% path of {rec['id']}:")
    prev = "__start__"
    for i, s in enumerate(steps):
        out.append(f"\t{prev} ==>|{i + 1}| {s['node']}")
        prev = s["node"]
    out.append(f"\t{prev} ==>|{len(steps) + 1}| __end__")
    return "\n".join(out)


def stage_change(rec: dict[str, Any]) -> str:
    gold = (rec.get("gold") or "").lower()
    if not gold or rec.get("answer") == rec.get("text_answer"):
        return "unchanged"
    if (rec.get("answer") or "").lower() == gold:
        return "fixed_by_vif"
    if (rec.get("text_answer") or "").lower() == gold:
        return "broken_by_vif"
    return "changed"


def _image_uri(rec: dict[str, Any], image_root: str | None) -> str | None:
    import base64
    import mimetypes
    from pathlib import Path

    ref = rec.get("image")
    if not ref:
        return None
    if ref.startswith(("http://", "https://")):
        return ref
    p = Path(ref)
    if not p.is_absolute() and image_root:
        p = Path(image_root) / p
    if not p.is_file() or p.stat().st_size > 2_000_000:
        return None
    mime = mimetypes.guess_type(p.name)[0] or "image/png"
    return f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode()


def render_html(records: list[dict[str, Any]], *, title: str = "i2cr run",
                image_root: str | None = None) -> str:
    """One self-contained HTML page for a run: filters and one card per mention."""
    routes = sorted({r.get("final_reason") or "error" for r in records})
    cards = []
    for r in records:
        steps = (r.get("trace") or {}).get("steps") or []
        correct = r.get("correct")
        cls = "ok" if correct else ("bad" if correct is False else "na")
        route = r.get("final_reason") or "error"
        rows = []
        for s in steps:
            ev = {e.get("type"): e for e in s.get("events", [])}
            detail = ""
            if s["node"] == "icr" and "icr" in ev:
                e = ev["icr"]
                detail = f"{e.get('choice')}: cos {e.get('score')} vs α {e.get('threshold')} → {e.get('decision')}"
            elif s["node"] == "iav" and "iav" in ev:
                e = ev["iav"]
                detail = f"{e.get('choice')}: {e.get('mode')} {e.get('score')} vs β {e.get('threshold')} → {e.get('decision')}"
            elif s["node"] == "tes":
                detail = f"→ {s.get('choice')}"
            elif s["node"] == "vif" and "tool_call" in ev:
                e = ev["tool_call"]
                detail = f"{e.get('tool')} ({e.get('how')}): {_short(e.get('result') or e.get('error') or '∅', 160)}"
            elif s["node"] == "prepare":
                detail = f"image {s.get('image_status')}, IAV {s.get('iav_mode') or 'none'}"
            elif s["node"] == "final":
                detail = f"{s.get('answer')} ({s.get('final_reason')})"
            why = s.get("edge", {}).get("why", "")
            rows.append(f"<tr><td>{s['step']}</td><td class='node'>{html.escape(s['node'])}</td>"
                        f"<td>{html.escape(detail)}</td><td class='why'>{html.escape(why)}</td></tr>")
        img = _image_uri(r, image_root)
        img_html = f"<img src='{html.escape(img)}' alt='mention image'>" if img else ""
        clues = "".join(f"<li><b>{html.escape(c.get('tool', ''))}</b>: {html.escape(_short(c.get('text') or '∅', 300))}</li>"
                        for c in r.get("clues") or [])
        cards.append(
            f"<section class='mention {cls}' data-correct='{cls}' data-route='{html.escape(route)}' "
            f"data-change='{stage_change(r)}' id='m-{html.escape(str(r['id']))}'>"
            f"<h2>{html.escape(str(r['id']))}: “{html.escape(str(r.get('mention')))}” → "
            f"{html.escape(str(r.get('answer')))}"
            + (f" <span class='gold'>gold: {html.escape(str(r.get('gold')))}</span>" if r.get("gold") else "")
            + f"</h2><p class='route'>{html.escape(route)} · path: {html.escape(' → '.join(r.get('path') or []))}</p>"
            f"{img_html}<table><tr><th>#</th><th>node</th><th>decision</th><th>edge</th></tr>{''.join(rows)}</table>"
            + (f"<ul class='clues'>{clues}</ul>" if clues else "") + "</section>")
    route_opts = "".join(f"<option value='{html.escape(x)}'>{html.escape(x)}</option>" for x in routes)
    data = json.dumps({"mentions": len(records)})
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}}
.controls{{position:sticky;top:0;background:#fff;padding:.6em;border-bottom:1px solid #ddd;z-index:1}}
.mention{{background:#fff;border-left:6px solid #adb5bd;margin:1em 0;padding:.5em 1em;box-shadow:0 1px 2px #0002}}
.mention.ok{{border-color:#2f9e44}} .mention.bad{{border-color:#e03131}}
h2{{font-size:1.05em;margin:.3em 0}} .gold{{color:#e03131;font-weight:normal}}
.route{{color:#666;font-size:.85em}} table{{border-collapse:collapse;font-size:.85em;width:100%}}
td,th{{border-bottom:1px solid #eee;padding:2px 6px;text-align:left;vertical-align:top}}
.node{{font-weight:bold}} .why{{color:#666}} img{{max-height:160px;float:right;margin-left:1em}}
.hidden{{display:none}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="controls">
<label><input type="checkbox" id="only-wrong"> wrong answers only</label>
<label>route <select id="route"><option value="">all</option>{route_opts}</select></label>
<label>stage change <select id="change"><option value="">all</option>
<option value="fixed_by_vif">fixed by VIF</option><option value="broken_by_vif">broken by VIF</option>
<option value="unchanged">unchanged</option></select></label>
<span id="count"></span></div>
<main>{''.join(cards)}</main>
<script>
const info = {data};
function apply() {{
  const wrong = document.getElementById('only-wrong').checked;
  const route = document.getElementById('route').value;
  const change = document.getElementById('change').value;
  let shown = 0;
  for (const el of document.querySelectorAll('.mention')) {{
    const ok = (!wrong || el.dataset.correct === 'bad') && (!route || el.dataset.route === route)
      && (!change || el.dataset.change === change);
    el.classList.toggle('hidden', !ok); if (ok) shown++;
  }}
  document.getElementById('count').textContent = shown + ' of ' + info.mentions + ' mentions';
}}
for (const id of ['only-wrong','route','change']) document.getElementById(id).addEventListener('change', apply);
apply();
</script></body></html>"""
