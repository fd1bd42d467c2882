"""Per-mention traces of the reasoning graph, built from LangGraph's own stream.

``traced_invoke`` runs the graph with ``stream_mode="updates"``: each chunk is one node visit (its
decision events ride in the update). What nodes emit beyond the state (full LLM prompts and raw
replies, tool outputs) goes to a collector and joins the visit of the node that emitted it. The
final state is the input with every update applied through the graph's own channels (reducers such
as ``path`` and ``events`` add up, the others keep the last value), which is what LangGraph's
``values`` mode would give, without copying the state after every step. The trace lists the node
visits in order, each with the edge taken next and why, and the input the page needs to explain
an answer (context, candidate names). It holds no settings and no environment, and error texts
are scrubbed (:mod:`i2cr.redact`), so no key can enter it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .graph.trace_events import COLLECTOR
from .redact import scrub

TRACE_SCHEMA = "i2cr.trace/1"


def _edge_reason(step: dict[str, Any], nxt: str) -> str:
    ev = {e.get("type"): e for e in step.get("events", [])}
    node = step["node"]
    if node == "prepare":
        if nxt == "final":
            return "no candidates"
        return f"image {step.get('image_status')}; IAV mode {step.get('iav_mode') or 'none'}"
    if node == "retrieve":
        return f"{len(ev.get('kb_candidates', {}).get('generated') or [])} candidate(s) from the KB"
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
        if nxt in ("final", "review"):
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
    if node == "review":
        e = ev.get("tes_hybrid", {})
        return f"the {e.get('path')} answers {e.get('answer')!r}" if e.get("answer") else ""
    return ""


TRACE_CONTEXT_CHARS = 2000


def _clean_errors(items: list[Any]) -> list[Any]:
    """``items`` (events) with every error text scrubbed of secrets."""
    out = []
    for e in items:
        if isinstance(e, dict) and isinstance(e.get("error"), str) and e["error"]:
            e = {**e, "error": scrub(e["error"])}
        out.append(e)
    return out


def _trace_input(inp: dict[str, Any]) -> dict[str, Any]:
    """What the trace keeps of the input: the context (cut) and the candidates' names."""
    ctx = str(inp.get("context") or "")
    out: dict[str, Any] = {"context": ctx[:TRACE_CONTEXT_CHARS],
                           "candidates": [{k: c[k] for k in ("name", "qid") if c.get(k)}
                                          for c in inp.get("candidates") or []
                                          if isinstance(c, dict)]}
    if len(ctx) > TRACE_CONTEXT_CHARS:
        out["context_cut_from"] = len(ctx)
    return out


_SUMMARY_KEYS = ("choice", "icr_score", "icr_decision", "iav_score", "iav_passed", "iav_mode",
                 "image_status", "image_reason", "round", "excluded", "tools_available",
                 "answer", "final_reason", "last_clue_ok")


class TraceBuilder:
    """Builds a mention's trace from its run's stream, one node update at a time: custom events
    (``add_custom``) join the visit of the node that emitted them, which is the next update of
    that node. :func:`traced_invoke` feeds it in-process; a server's playground feeds it the
    ``updates`` and ``custom`` parts of a streamed run."""

    def __init__(self, inp: dict[str, Any], channels: Any = None, *, with_prompts: bool = True,
                 pending: list[dict[str, Any]] | None = None,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None):
        self.inp, self.channels, self.with_prompts = inp, channels or {}, with_prompts
        self.steps: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = pending if pending is not None else []
        self.state: dict[str, Any] = dict(inp)
        self.observer = on_event

    def notify(self, kind: str, ev: dict[str, Any]) -> None:
        if self.observer is None:
            return
        try:
            self.observer(kind, ev)
        except Exception:  # noqa: BLE001 - a broken observer (e.g. a closed pipe) must not
            self.observer = None  # fail the mention; stop telling it

    def add_custom(self, event: dict[str, Any]) -> None:
        self.pending.append(event)

    def add_update(self, node: str, upd: dict[str, Any] | None) -> None:
        if node.startswith("__"):
            return
        upd = upd or {}
        if upd.get("events"):
            upd = {**upd, "events": _clean_errors(upd["events"])}
        state, pending = self.state, self.pending
        for k, v in upd.items():
            op = getattr(self.channels.get(k), "operator", None)
            state[k] = op(state[k], v) if op is not None and k in state else v
        mine = [c for c in pending if c.get("node") in (None, node)]  # scrubbed by emit
        pending[:] = [c for c in pending if c.get("node") not in (None, node)]
        if not self.with_prompts:
            mine = [{k: v for k, v in c.items() if k != "prompt"} for c in mine]
        for c in mine:
            self.notify("custom", c)
        step = {"step": len(self.steps), "node": node,
                **{k: upd[k] for k in _SUMMARY_KEYS if k in upd},
                "events": list(upd.get("events") or []), "stream": mine}
        self.steps.append(step)
        self.notify("node", step)

    def finish(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(final state, trace)."""
        steps = self.steps
        for i, s in enumerate(steps):
            nxt = steps[i + 1]["node"] if i + 1 < len(steps) else "__end__"
            s["edge"] = {"to": nxt, "why": _edge_reason(s, nxt) if nxt != "__end__" else "done"}
        return self.state, {"schema": TRACE_SCHEMA, "input": _trace_input(self.inp),
                            "steps": steps}


def traced_invoke(graph: Any, inp: dict[str, Any], *, context: Any, config: dict | None = None,
                  on_event: Callable[[str, dict[str, Any]], None] | None = None,
                  with_prompts: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the graph; return (final state, trace)."""
    tb = TraceBuilder(inp, getattr(graph, "channels", {}), with_prompts=with_prompts,
                      on_event=on_event)
    token = COLLECTOR.set(tb.pending)
    try:
        for chunk in graph.stream(inp, context=context, config=config, stream_mode="updates"):
            for node, upd in chunk.items():
                tb.add_update(node, upd)
    finally:
        COLLECTOR.reset(token)
    return tb.finish()


# --- rendering ---------------------------------------------------------------------------------

# C0 and C1 control characters (ESC starts ANSI/OSC sequences, BEL ends OSC ones, CR rewrites
# the line) and the bidirectional overrides that reorder what a terminal shows
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: Any) -> str:
    """``text`` safe for a terminal: control characters shown as escapes (``\\x1b``), never sent."""
    return _CONTROL.sub(lambda m: (f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                                   else f"\\u{ord(m.group()):04x}"), str(text))


def short(x: Any, n: int = 90) -> str:
    s = " ".join(str(x).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def render_tree(rec: dict[str, Any]) -> str:
    """A readable tree of one mention's decisions, safe for a terminal (data cannot send control
    sequences)."""
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
            top = e.get("top") or (e.get("scores") or [])[:3]
            if top:
                desc += "  top: " + ", ".join(f"{t.get('name')} {t.get('score')}" for t in top)
        elif node == "icr":
            e = ev.get("icr", {})
            desc = (f"{e.get('choice')!r} cos {e.get('score')} vs α {e.get('threshold')}: "
                    f"{e.get('decision')}")
        elif node == "iav":
            e = ev.get("iav", {})
            desc = (f"{e.get('choice')!r} {e.get('mode')} {e.get('score')} vs β {e.get('threshold')}: "
                    f"{e.get('decision')}")
        elif node == "retrieve":
            e = ev.get("kb_candidates", {})
            desc = (f"{len(e.get('generated') or [])} candidate(s) from KB {e.get('kb')!r}: "
                    + ", ".join(f"{g.get('name')} {g.get('rrf')}" for g in
                                (e.get("generated") or [])[:3]))
        elif node == "vif":
            e = ev.get("tool_call", {})
            desc = (f"tool {e.get('tool')} ({e.get('how')}, {e.get('backend')}) → "
                    f"{short(e.get('result') or e.get('error') or '∅', 70)!r}")
        elif node == "review":
            e = ev.get("tes_hybrid", {})
            desc = (f"{e.get('ranker_answer')!r} ranker p {e.get('p')} vs {e.get('threshold')}: "
                    f"{e.get('path')} → {e.get('answer')!r}")
        else:
            desc = f"{s.get('answer')!r} ({s.get('final_reason')})"
        lines.append(f"{head} {node}: {desc}")
        for c in s.get("stream", []):
            if c.get("type") == "llm_call":
                lines.append(f"{pad}   llm: {short(c.get('raw') or c.get('error'), 80)!r}"
                             f" ({c.get('tokens') or '?'} tokens, {c.get('latency_s', '?')}s)")
        if s.get("edge") and s["edge"]["to"] != "__end__":
            lines.append(f"{pad}   ⇢ {s['edge']['to']}: {s['edge']['why']}")
    return "\n".join(printable(line) for line in lines)


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


def render_html(records: list[dict[str, Any]], *, title: str = "i2cr run",
                image_root: str | None = None, remote_images: bool = False) -> str:
    """One self-contained HTML page for a run (see :mod:`i2cr.trace_page`)."""
    from .trace_page import render_page

    return render_page(records, title=title, image_root=image_root, remote_images=remote_images)
