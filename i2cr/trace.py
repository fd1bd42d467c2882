"""Per-mention traces of the reasoning graph, built from LangGraph's ``updates`` stream alone.

``traced_invoke`` runs the graph with ``graph.stream(..., stream_mode="updates")``: each chunk is
one node visit, and its events (:mod:`i2cr.graph.events`: every decision, LLM call and tool run,
prompts included with ``trace_prompts``) ride in the update, the one channel they travel. The final
state is the input with every update applied by the reducers :class:`~i2cr.graph.state.State`
declares (``path`` and ``events`` add up, the others keep the last value): the state LangGraph
ends with, without asking for its ``values`` mode (a copy of the state after every step).

The trace lists the node visits in order, each with its summary keys, the range of the record's
``events`` it made (``event_range``: each event is stored once, in the record), and the edge taken
next and why; and the input the page needs to explain an answer (context, candidate names). It
holds no settings and no environment, and error texts are scrubbed (:mod:`i2cr.redact`), so no key
can enter it. Records of older runs (``i2cr.trace/1``) kept a copy of each step's events in the
step; :func:`step_events` reads both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from .data import same_entity
from .graph.events import (
    IavDecision,
    IcrDecision,
    KbCandidates,
    TesAnswer,
    TesHybrid,
    ToolCall,
    is_llm_call,
    last,
)
from .graph.state import State
from .redact import scrub

TRACE_SCHEMA = "i2cr.trace/2"

Events = Sequence[Mapping[str, Any]]


def _reducers(schema: type) -> dict[str, Callable[[Any, Any], Any]]:
    """The reducers a state schema declares (``Annotated[list[...], operator.add]``), by key."""
    out = {}
    for k, hint in get_type_hints(schema, include_extras=True).items():
        if get_origin(hint) is Annotated:
            fn = next((a for a in get_args(hint)[1:] if callable(a)), None)
            if fn is not None:
                out[k] = fn
    return out


REDUCERS = _reducers(State)  # path and events: operator.add


def step_events(rec: Mapping[str, Any], step: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The events of one trace step: its ``event_range`` of the record's ``events``; a step of an
    ``i2cr.trace/1`` record (older runs) held a copy of them itself."""
    r = step.get("event_range")
    if isinstance(r, list) and len(r) == 2 and all(isinstance(i, int) for i in r):
        evs = (rec.get("events") or [])[r[0]:r[1]]
    else:
        evs = step.get("events") or []
    return [e for e in evs if isinstance(e, dict)]


# --- why each edge was taken: one function per node ---------------------------------------------

def _why_prepare(step: Mapping[str, Any], evs: Events, nxt: str) -> str:
    if nxt == "final":
        return "no candidates"
    return f"image {step.get('image_status')}; IAV mode {step.get('iav_mode') or 'none'}"


def _why_retrieve(step: Mapping[str, Any], evs: Events, nxt: str) -> str:
    return f"{len(last(evs, KbCandidates).get('generated') or [])} candidate(s) from the KB"


def _why_tes(step: Mapping[str, Any], evs: Events, nxt: str) -> str:
    return f"check the choice {step.get('choice')!r}"


def _why_icr(step: Mapping[str, Any], evs: Events, nxt: str) -> str:
    e = last(evs, IcrDecision)
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


def _why_iav(step: Mapping[str, Any], evs: Events, nxt: str) -> str:
    e = last(evs, IavDecision)
    if e.get("decision") == "pass":
        return f"IAV {e.get('score')} >= {e.get('threshold')} ({e.get('mode')}): accept"
    if nxt == "vif":
        return f"IAV {e.get('score')} < {e.get('threshold')} ({e.get('mode')}): ask for a visual clue"
    return f"IAV failed ({e.get('score')} vs {e.get('threshold')}) and no tool or round left"


def _why_vif(step: Mapping[str, Any], evs: Events, nxt: str) -> str:
    t = last(evs, ToolCall)
    if nxt == "tes":
        return f"clue from {t.get('tool')}: choose again with it"
    if nxt == "vif":
        return f"{t.get('tool') or 'tool'} gave no usable clue: next tool"
    return "no tool left"


def _why_review(step: Mapping[str, Any], evs: Events, nxt: str) -> str:
    e = last(evs, TesHybrid)
    return f"the {e.get('path')} answers {e.get('answer')!r}" if e.get("answer") else ""


_WHY: dict[str, Callable[[Mapping[str, Any], Events, str], str]] = {
    "prepare": _why_prepare, "retrieve": _why_retrieve, "tes": _why_tes, "icr": _why_icr,
    "iav": _why_iav, "vif": _why_vif, "review": _why_review}


def edge_reason(step: Mapping[str, Any], evs: Events, nxt: str) -> str:
    """Why the run went from ``step`` (whose events are ``evs``) to the node ``nxt``."""
    if nxt == "__end__":
        return "done"
    why = _WHY.get(str(step.get("node")))
    return why(step, evs, nxt) if why is not None else ""


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
    """Builds a mention's final state and trace from its run's ``updates`` stream, one node update
    at a time. :func:`traced_invoke` feeds it in-process; a server's playground feeds it the
    ``updates`` parts of a streamed run. ``on_event`` sees each node visit as it ends, with its
    events (``("node", step)``)."""

    def __init__(self, inp: dict[str, Any], *,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None):
        self.inp = inp
        self.steps: list[dict[str, Any]] = []
        self.step_evs: list[list[dict[str, Any]]] = []
        self.state: dict[str, Any] = dict(inp)
        self.observer = on_event

    def notify(self, kind: str, ev: dict[str, Any]) -> None:
        if self.observer is None:
            return
        try:
            self.observer(kind, ev)
        except Exception:  # noqa: BLE001 - a broken observer (e.g. a closed pipe) must not
            self.observer = None  # fail the mention; stop telling it

    def add_update(self, node: str, upd: dict[str, Any] | None) -> None:
        if node.startswith("__"):
            return
        upd = upd or {}
        evs = _clean_errors(list(upd.get("events") or []))
        if "events" in upd:
            upd = {**upd, "events": evs}
        state = self.state
        start = len(state.get("events") or [])
        for k, v in upd.items():
            op = REDUCERS.get(k)
            state[k] = op(state[k], v) if op is not None and k in state else v
        step = {"step": len(self.steps), "node": node,
                **{k: upd[k] for k in _SUMMARY_KEYS if k in upd},
                "event_range": [start, start + len(evs)]}
        self.steps.append(step)
        self.step_evs.append(evs)
        self.notify("node", {**step, "events": evs})

    def finish(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(final state, trace)."""
        steps = self.steps
        for i, s in enumerate(steps):
            nxt = steps[i + 1]["node"] if i + 1 < len(steps) else "__end__"
            s["edge"] = {"to": nxt, "why": edge_reason(s, self.step_evs[i], nxt)}
        return self.state, {"schema": TRACE_SCHEMA, "input": _trace_input(self.inp),
                            "steps": steps}


def traced_invoke(graph: Any, inp: dict[str, Any], *, context: Any, config: dict | None = None,
                  on_event: Callable[[str, dict[str, Any]], None] | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the graph; return (final state, trace)."""
    tb = TraceBuilder(inp, on_event=on_event)
    for chunk in graph.stream(inp, context=context, config=config, stream_mode="updates"):
        for node, upd in chunk.items():
            tb.add_update(node, upd)
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


def _tree_prepare(s: Mapping[str, Any], evs: Events) -> str:
    return (f"image {s.get('image_status')}" + (f" ({s.get('image_reason')})"
            if s.get("image_reason") and s.get("image_status") != "absent" else "")
            + f"; IAV mode {s.get('iav_mode') or 'none'}; tools "
            f"{', '.join(s.get('tools_available') or []) or 'none'}")


def _tree_tes(s: Mapping[str, Any], evs: Events) -> str:
    e = last(evs, TesAnswer)
    desc = f"→ {s.get('choice')!r} ({e.get('method', '?')})"
    if e.get("nil_reason"):
        desc += f": {short(e['nil_reason'])}"
    top = e.get("top") or (e.get("scores") or [])[:3]
    if top:
        desc += "  top: " + ", ".join(f"{t.get('name')} {t.get('score')}" for t in top)
    return desc


def _tree_icr(s: Mapping[str, Any], evs: Events) -> str:
    e = last(evs, IcrDecision)
    return (f"{e.get('choice')!r} cos {e.get('score')} vs α {e.get('threshold')}: "
            f"{e.get('decision')}")


def _tree_iav(s: Mapping[str, Any], evs: Events) -> str:
    e = last(evs, IavDecision)
    return (f"{e.get('choice')!r} {e.get('mode')} {e.get('score')} vs β {e.get('threshold')}: "
            f"{e.get('decision')}")


def _tree_retrieve(s: Mapping[str, Any], evs: Events) -> str:
    e = last(evs, KbCandidates)
    return (f"{len(e.get('generated') or [])} candidate(s) from KB {e.get('kb')!r}: "
            + ", ".join(f"{g.get('name')} {g.get('rrf')}" for g in (e.get("generated") or [])[:3]))


def _tree_vif(s: Mapping[str, Any], evs: Events) -> str:
    e = last(evs, ToolCall)
    return (f"tool {e.get('tool')} ({e.get('how')}, {e.get('backend')}) → "
            f"{short(e.get('result') or e.get('error') or '∅', 70)!r}")


def _tree_review(s: Mapping[str, Any], evs: Events) -> str:
    e = last(evs, TesHybrid)
    return (f"{e.get('ranker_answer')!r} ranker p {e.get('p')} vs {e.get('threshold')}: "
            f"{e.get('path')} → {e.get('answer')!r}")


def _tree_final(s: Mapping[str, Any], evs: Events) -> str:
    return f"{s.get('answer')!r} ({s.get('final_reason')})"


_TREE: dict[str, Callable[[Mapping[str, Any], Events], str]] = {
    "prepare": _tree_prepare, "tes": _tree_tes, "icr": _tree_icr, "iav": _tree_iav,
    "retrieve": _tree_retrieve, "vif": _tree_vif, "review": _tree_review}


def render_tree(rec: dict[str, Any]) -> str:
    """A readable tree of one mention's decisions, safe for a terminal (data cannot send control
    sequences)."""
    gold = rec.get("gold")
    verdict = "" if gold is None else ("  ✓" if rec.get("correct") else f"  ✗ (gold: {gold})")
    lines = [f"{rec['id']}  {rec.get('mention')!r} → {rec.get('answer')!r}{verdict}  "
             f"[{rec.get('final_reason')}]"]
    steps = (rec.get("trace") or {}).get("steps") or []
    for i, s in enumerate(steps):
        last_step = i == len(steps) - 1
        head = "└─" if last_step else "├─"
        pad = "   " if last_step else "│  "
        node = s["node"]
        evs = step_events(rec, s)
        lines.append(f"{head} {node}: {_TREE.get(node, _tree_final)(s, evs)}")
        for c in evs:
            if is_llm_call(c):
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
    """What the clue rounds did to a labelled answer, judged by the rule the record's ``correct``
    uses (:func:`i2cr.data.same_entity`)."""
    gold = rec.get("gold")
    if not gold or rec.get("answer") == rec.get("text_answer"):
        return "unchanged"
    if same_entity(rec.get("answer"), gold):
        return "fixed_by_vif"
    if same_entity(rec.get("text_answer"), gold):
        return "broken_by_vif"
    return "changed"


def render_html(records: list[dict[str, Any]], *, title: str = "i2cr run",
                image_root: str | None = None, remote_images: bool = False) -> str:
    """One self-contained HTML page for a run (see :mod:`i2cr.trace_page`)."""
    from .trace_page import render_page

    return render_page(records, title=title, image_root=image_root, remote_images=remote_images)
