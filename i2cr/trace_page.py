"""The HTML page of a run: one collapsed card per mention, wrong answers first, each explaining
its answer (context, clues, every candidate with its score per round, where the gold ranked, why
the answer won, the path through the graph).

The page is meant to be shared, so it embeds nothing it was not meant to: a local image is
embedded only if it lies under the run's image root (symlinks resolved), is a regular file and
decodes as an image a browser shows; remote image URLs are fetched only when asked
(``remote_images``), and a Content-Security-Policy holds the page to that.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from PIL import Image

from .data import NIL, same_entity
from .graph.events import IavDecision, IcrDecision, TesAnswer, TesFallback, ToolCall, last, of_kind
from .redact import scrub
from .trace import short, stage_change, step_events

EMBED_MAX_BYTES = 2_000_000
_BROWSER_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif",
                    "WEBP": "image/webp", "BMP": "image/bmp"}
_NEVER = (Path("/proc"), Path("/sys"), Path("/dev"))


# --- images ------------------------------------------------------------------------------------

def _image_mime(data: bytes) -> str | None:
    """The MIME type of ``data`` if it decodes as an image a browser shows, else None."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()
    except Exception:  # noqa: BLE001 - anything that is not a clean image is not embedded
        return None
    return _BROWSER_FORMATS.get(fmt or "")


def _read_regular(path: Path) -> tuple[bytes | None, str]:
    """The bytes of a regular file of at most EMBED_MAX_BYTES, opened without blocking (a FIFO
    or device is refused, never read)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None, "cannot be opened"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size == 0:
            return None, "empty (or a special file)"
        if st.st_size > EMBED_MAX_BYTES:
            return None, f"over {EMBED_MAX_BYTES} bytes"
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(EMBED_MAX_BYTES + 1)
    except OSError:
        return None, "cannot be read"
    finally:
        os.close(fd)
    if len(data) > EMBED_MAX_BYTES:
        return None, f"over {EMBED_MAX_BYTES} bytes"
    return data, ""


NO_ROOT = "local image not embedded: no image root given (--image-root)"


def embeddable_image(ref: str | None, image_root: str | None, *,
                     remote_images: bool = False) -> tuple[str | None, str]:
    """``(src, "")`` for an image the page may show, or ``(None, why not)``."""
    if not ref:
        return None, ""
    if ref.startswith(("http://", "https://")):
        if remote_images:
            return ref, ""
        return None, "remote image not loaded (--remote-images shows it)"
    if ref.startswith("data:"):
        head, _, payload = ref.partition(",")
        try:
            data = base64.b64decode(payload, validate=True) if head.endswith(";base64") else b""
        except ValueError:
            data = b""
        mime = _image_mime(data) if 0 < len(data) <= EMBED_MAX_BYTES else None
        if mime is None:
            return None, "inline image is not an image"
        return f"data:{mime};base64," + base64.b64encode(data).decode(), ""
    if not image_root:
        return None, NO_ROOT
    try:
        root = Path(image_root).resolve(strict=True)
    except (OSError, RuntimeError):
        return None, "image root not found"
    p = Path(ref)
    tries = [p] if p.is_absolute() else [root / p, Path.cwd() / p]
    why = "not found"
    for cand in tries:
        try:
            real = cand.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if not real.is_relative_to(root) or any(real.is_relative_to(n) for n in _NEVER):
            why = "outside the image root"
            continue
        content, why = _read_regular(real)
        if content is None:
            continue
        mime = _image_mime(content)
        if mime is None:
            why = "not an image"
            continue
        return f"data:{mime};base64," + base64.b64encode(content).decode(), ""
    return None, f"image not embedded: {why}"


# --- what a card explains ----------------------------------------------------------------------

def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def tes_visits(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Each TES visit of a mention: its round, what was offered, the ranker's scores (the event's
    ``scores``, every offered candidate; else its ``top``, the first few), and the choice."""
    visits: list[dict[str, Any]] = []
    per_round: dict[Any, int] = {}
    for s in (rec.get("trace") or {}).get("steps") or []:
        if s.get("node") != "tes":
            continue
        evs = step_events(rec, s)
        answers = of_kind(evs, TesAnswer)
        fallback = of_kind(evs, TesFallback)[:1]
        ans = answers[-1] if answers else cast(TesAnswer, {})
        rnd = ans.get("round") or (visits[-1]["round"] if visits else 1)
        per_round[rnd] = per_round.get(rnd, 0) + 1
        offered = list(ans.get("offered") or [])
        scores: dict[str, float] | None = None
        complete = False
        nil_p = None
        listed = ans.get("scores") if isinstance(ans.get("scores"), list) else None
        if listed is None and isinstance(ans.get("top"), list):
            listed = ans["top"]
        if listed:
            scores = {}
            for t in listed:
                if not isinstance(t, dict):
                    continue
                if t.get("name") == NIL and t.get("score") is None:
                    nil_p = t.get("best_probability")
                    continue
                if isinstance(t.get("score"), (int, float)):
                    scores[str(t.get("name"))] = float(t["score"])
            complete = isinstance(ans.get("scores"), list) or len(scores) >= len(offered)
        visits.append({
            "round": rnd, "label": f"R{rnd}" + (f"·{per_round[rnd]}" if per_round[rnd] > 1 else ""),
            "choice": s.get("choice"), "offered": offered, "scores": scores, "complete": complete,
            "nil_probability": nil_p,
            "method": fallback[0].get("method") if fallback else ans.get("method"),
            "raw": ans.get("raw"), "nil_reason": ans.get("nil_reason"),
            # a NIL answered by rule (tes_strategy=llm) asked no LLM
            "llm": bool(answers) and ans.get("strategy") != "retrieval"
            and ans.get("method") != "nil_rule"})
    return visits


def gold_rank(visit: dict[str, Any], gold: str) -> tuple[int | None, int, str]:
    """Where the gold stood in one TES visit: ``(rank or None, out of, words)``."""
    scores, offered = visit["scores"], visit["offered"]
    n = len(offered) or len(scores or {})
    name = next((o for o in offered if same_entity(o, gold)), None)
    if name is None and scores:
        name = next((o for o in scores if same_entity(o, gold)), None)
    if name is None:
        return None, n, "not offered (excluded)" if offered else "not ranked"
    if scores is None:
        chosen = same_entity(visit["choice"], gold)
        return (1 if chosen else None), n, ("chosen by the LLM" if chosen
                                            else "offered; the LLM chose another")
    if name not in scores:
        return None, n, f"below the recorded top {len(scores)}"
    rank = 1 + sum(1 for v in scores.values() if v > scores[name])
    return rank, n, f"rank {rank} of {n} (score {_fmt(scores[name])})"


def why_answer(rec: dict[str, Any], visits: list[dict[str, Any]]) -> str:
    """One paragraph: how the answer was picked and which checks let it through."""
    if rec.get("error"):
        return f"No answer: the mention failed ({scrub(str(rec['error']))})."
    answer = rec.get("answer")
    steps = (rec.get("trace") or {}).get("steps") or []
    parts: list[str] = []
    idx = max((i for i, v in enumerate(visits) if same_entity(v["choice"], answer)), default=None)
    if idx is not None:
        v = visits[idx]
        if answer == NIL and v.get("nil_reason"):
            parts.append(f"NIL in {v['label']} ({v.get('method')}): {short(v['nil_reason'], 120)}"
                         + ("; no LLM was asked" if v.get("method") == "nil_rule" else ""))
        elif v["scores"]:
            ranked = sorted(v["scores"].items(), key=lambda kv: -kv[1])
            mine = next((s for n, s in ranked if same_entity(n, answer)), None)
            rivals = [(n, s) for n, s in ranked if not same_entity(n, answer)]
            if mine is not None:
                txt = f"“{answer}” scored {_fmt(mine)} in {v['label']}"
                if rivals:
                    txt += (f", ahead of “{rivals[0][0]}” ({_fmt(rivals[0][1])}, a gap of "
                            f"{_fmt(mine - rivals[0][1])})")
                parts.append(txt)
            elif answer == NIL and v.get("nil_probability") is not None:
                parts.append(f"NIL in {v['label']}: the best candidate's probability "
                             f"{_fmt(v['nil_probability'])} was under the NIL threshold")
        elif v["llm"]:
            parts.append(f"the LLM answered {short(v.get('raw') or '∅', 80)!r} in {v['label']}, "
                         f"read as “{v['choice']}” ({v.get('method')})")
        else:
            parts.append(f"“{v['choice']}” chosen in {v['label']} ({v.get('method')})")
    # the checks after the last TES visit that chose it
    tes_idx = [i for i, s in enumerate(steps) if s.get("node") == "tes"]
    after = tes_idx[idx] if idx is not None and idx < len(tes_idx) else -1
    for s in steps[after + 1:]:
        why = (s.get("edge") or {}).get("why")
        if why and why != "done":
            parts.append(f"{s['node']}: {why}")
    parts.append(f"route: {rec.get('final_reason') or '?'}")
    gold = rec.get("gold")
    if gold is not None and rec.get("correct") is False:
        names = {c.get("name") for c in ((rec.get("trace") or {}).get("input") or {})
                 .get("candidates") or []} | {o for v in visits for o in v["offered"]}
        if not same_entity(gold, NIL) and names and not any(same_entity(n, gold) for n in names):
            parts.append(f"the gold “{gold}” was not among the candidates, so no ranking "
                         "could choose it")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def _candidates(rec: dict[str, Any], visits: list[dict[str, Any]]) -> list[str]:
    names = [c.get("name") for c in ((rec.get("trace") or {}).get("input") or {})
             .get("candidates") or [] if c.get("name")]
    for v in visits:
        names += [o for o in v["offered"]] + list(v["scores"] or {})
    return list(dict.fromkeys(str(n) for n in names))


def _candidate_table(rec: dict[str, Any], visits: list[dict[str, Any]]) -> str:
    names = _candidates(rec, visits)
    if not names:
        return "<p class='no-candidates'>No candidates.</p>"
    last = visits[-1]["scores"] if visits and visits[-1]["scores"] else {}
    names.sort(key=lambda n: (n not in last, -last.get(n, 0.0)))
    gold, answer = rec.get("gold"), rec.get("answer")
    head = "".join(f"<th title='{'LLM choice' if v['llm'] and not v['scores'] else 'ranker score'}'>"
                   f"{html.escape(v['label'])}</th>" for v in visits)
    rows = []
    for n in names:
        cls = (["cand"] + (["answer"] if same_entity(n, answer) else [])
               + (["gold-row"] if same_entity(n, gold) else []))
        tags = ("<span class='tag answer-tag'>answer</span>" if same_entity(n, answer) else "") + \
               ("<span class='tag gold-tag'>gold</span>" if same_entity(n, gold) else "")
        cells = []
        for v in visits:
            chosen = same_entity(v["choice"], n)
            if v["offered"] and n not in v["offered"] and n not in (v["scores"] or {}):
                txt = "excl."
            elif v["scores"] is not None:
                txt = _fmt(v["scores"][n]) if n in v["scores"] else "·"
            else:
                txt = "chosen" if chosen else ""
            cells.append(f"<td class='score{' chosen' if chosen else ''}'>{html.escape(txt)}"
                         f"{' ✔' if chosen and txt != 'chosen' else ''}</td>")
        rows.append(f"<tr class='{' '.join(cls)}'><td class='name'>{html.escape(n)} {tags}</td>"
                    f"{''.join(cells)}</tr>")
    note = ""
    if any(v["scores"] is not None and not v["complete"] for v in visits):
        note = ("<p class='note'>· not recorded: this run kept only the top scores of each "
                "round.</p>")
    return (f"<table class='candidates'><thead><tr><th>candidate</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>{note}")


def _gold_summary(rec: dict[str, Any], visits: list[dict[str, Any]]) -> tuple[str, str]:
    """(short form for the card's header, sentence for its body)."""
    gold = rec.get("gold")
    if gold is None:
        return "", ""
    if same_entity(gold, NIL):
        return "gold NIL", "The gold is NIL (no candidate is right)."
    names = _candidates(rec, visits)
    if names and not any(same_entity(n, gold) for n in names):
        return "gold not a candidate", f"Gold “{gold}”: not among the candidates."
    if not visits:
        return "", f"Gold “{gold}”: no ranking recorded."
    per = []
    short = ""
    for v in visits:
        rank, n, words = gold_rank(v, gold)
        per.append(f"{v['label']}: {words}")
        if v is visits[-1]:
            short = f"gold rank {rank}/{n}" if rank else f"gold {words.split(' (')[0]}"
    return short, f"Gold “{gold}”: " + "; ".join(per) + "."


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
.controls{position:sticky;top:0;background:#fff;padding:.6em;border-bottom:1px solid #ddd;z-index:1}
.controls label,.controls button{margin-right:1em}
.mention{background:#fff;border-left:6px solid #adb5bd;margin:.6em 0;padding:.3em 1em;\
box-shadow:0 1px 2px #0002}
.mention.ok{border-color:#2f9e44} .mention.bad{border-color:#e03131}
summary{cursor:pointer;font-size:1.02em;padding:.2em 0} .verdict{font-weight:bold}
.mention.ok .verdict{color:#2f9e44} .mention.bad .verdict{color:#e03131}
.gold{color:#666} .mention.bad .gold{color:#e03131;font-weight:bold}
.rank,.route{color:#666;font-size:.85em;margin-left:.6em}
.context{background:#f1f3f5;padding:.4em .6em;border-radius:4px}
.why-answer{border-left:3px solid #4dabf7;padding-left:.6em}
table{border-collapse:collapse;font-size:.85em;width:100%;margin:.5em 0}
td,th{border-bottom:1px solid #eee;padding:2px 6px;text-align:left;vertical-align:top}
.candidates td.score{font-variant-numeric:tabular-nums} td.chosen{font-weight:bold}
tr.answer td.name{font-weight:bold} .mention.bad tr.gold-row{background:#fff5f5}
.tag{font-size:.75em;border-radius:3px;padding:0 4px;margin-left:4px;background:#e7f5ff;color:#1c7ed6}
.mention.bad .gold-tag{background:#ffe3e3;color:#e03131}
.node{font-weight:bold} .why{color:#666} img{max-height:160px;float:right;margin-left:1em}
.note,.img-note{color:#868e96;font-size:.8em} .error{color:#e03131}
.hidden{display:none}
"""

_SCRIPT = """
const info = JSON.parse(document.getElementById('page-info').textContent);
function apply() {
  const wrong = document.getElementById('only-wrong').checked;
  const route = document.getElementById('route').value;
  const change = document.getElementById('change').value;
  let shown = 0;
  for (const el of document.querySelectorAll('.mention')) {
    const ok = (!wrong || el.dataset.correct === 'bad') && (!route || el.dataset.route === route)
      && (!change || el.dataset.change === change);
    el.classList.toggle('hidden', !ok); if (ok) shown++;
  }
  document.getElementById('count').textContent = shown + ' of ' + info.mentions + ' mentions';
}
function openAll(open) {
  for (const el of document.querySelectorAll('.mention:not(.hidden)')) el.open = open;
}
for (const id of ['only-wrong','route','change']) \
document.getElementById(id).addEventListener('change', apply);
document.getElementById('expand-all').addEventListener('click', () => openAll(true));
document.getElementById('collapse-all').addEventListener('click', () => openAll(false));
apply();
"""


def _detail_icr(s: dict[str, Any], evs: list[dict[str, Any]]) -> str:
    e = last(evs, IcrDecision)
    return (f"{e.get('choice')}: cos {e.get('score')} vs α {e.get('threshold')} → "
            f"{e.get('decision')}") if e else ""


def _detail_iav(s: dict[str, Any], evs: list[dict[str, Any]]) -> str:
    e = last(evs, IavDecision)
    return (f"{e.get('choice')}: {e.get('mode')} {e.get('score')} vs β {e.get('threshold')} → "
            f"{e.get('decision')}") if e else ""


def _detail_vif(s: dict[str, Any], evs: list[dict[str, Any]]) -> str:
    e = last(evs, ToolCall)
    return (f"{e.get('tool')} ({e.get('how')}): "
            f"{short(e.get('result') or scrub(e.get('error')) or '∅', 160)}") if e else ""


# what the steps table says each node decided
_DETAIL: dict[str, Callable[[dict[str, Any], list[dict[str, Any]]], str]] = {
    "icr": _detail_icr, "iav": _detail_iav, "vif": _detail_vif,
    "tes": lambda s, evs: f"→ {s.get('choice')}",
    "prepare": lambda s, evs: f"image {s.get('image_status')}, IAV {s.get('iav_mode') or 'none'}",
    "final": lambda s, evs: f"{s.get('answer')} ({s.get('final_reason')})",
}


def _steps_table(rec: dict[str, Any], steps: list[dict[str, Any]]) -> str:
    rows = []
    for s in steps:
        how = _DETAIL.get(str(s["node"]))
        detail = how(s, step_events(rec, s)) if how is not None else ""
        why = (s.get("edge") or {}).get("why", "")
        rows.append(f"<tr><td>{s.get('step')}</td><td class='node'>{html.escape(str(s['node']))}</td>"
                    f"<td>{html.escape(detail)}</td><td class='why'>{html.escape(why)}</td></tr>")
    return ("<table class='steps'><tr><th>#</th><th>node</th><th>decision</th><th>edge</th></tr>"
            f"{''.join(rows)}</table>")


def _card(r: dict[str, Any], image_root: str | None, remote_images: bool) -> str:
    e = html.escape
    correct = r.get("correct")
    cls = "ok" if correct else ("bad" if correct is False else "na")
    route = r.get("final_reason") or "error"
    steps = (r.get("trace") or {}).get("steps") or []
    visits = tes_visits(r)
    short_rank, gold_text = _gold_summary(r, visits)
    verdict = {"ok": "✓", "bad": "✗", "na": "·"}[cls]
    gold = r.get("gold")
    answer = "(no answer)" if r.get("answer") is None else str(r.get("answer"))
    mention = "?" if r.get("mention") is None else str(r.get("mention"))
    summary = (f"<summary><span class='verdict'>{verdict}</span> <b>{e(str(r['id']))}</b>: "
               f"“{e(mention)}” → <span class='answer'>{e(answer)}</span>"
               + (f" <span class='gold'>gold: {e(str(gold))}</span>" if gold is not None and cls == "bad"
                  else "")
               + (f"<span class='rank'>{e(short_rank)}</span>" if short_rank else "")
               + f"<span class='route'>{e(route)}</span></summary>")
    body = []
    src, why_not = embeddable_image(r.get("image"), image_root, remote_images=remote_images)
    if src:
        body.append(f"<img src='{e(src)}' alt='mention image'>")
    elif why_not:
        body.append(f"<p class='img-note'>{e(why_not)}</p>")
    if r.get("error"):
        body.append(f"<p class='error'>{e(scrub(str(r['error'])))}</p>")
    ctx = ((r.get("trace") or {}).get("input") or {}).get("context", r.get("context"))
    if ctx:
        body.append(f"<p class='context'><b>Context</b>: {e(str(ctx))}</p>")
    body.append(f"<p class='why-answer'><b>Why "
                f"{e(answer if r.get('answer') is None else f'“{answer}”')}</b>: "
                f"{e(why_answer(r, visits))}</p>")
    if gold_text:
        body.append(f"<p class='gold-rank'>{e(gold_text)}</p>")
    if visits or _candidates(r, visits):
        body.append(_candidate_table(r, visits))
    clues = "".join(f"<li><b>{e(str(c.get('tool', '')))}</b>: "
                    f"{e(short(c.get('text') or '∅', 300))}</li>" for c in r.get("clues") or [])
    body.append(f"<ul class='clues'>{clues}</ul>" if clues else "<p class='clues note'>No clues.</p>")
    body.append(f"<p class='route'>path: {e(' → '.join(r.get('path') or []))}</p>")
    if steps:
        body.append(_steps_table(r, steps))
    return (f"<details class='mention {cls}' data-correct='{cls}' data-route='{e(route)}' "
            f"data-change='{stage_change(r)}' id='m-{e(str(r['id']))}'>{summary}"
            f"<div class='body'>{''.join(body)}</div></details>")


def mention_card(rec: dict[str, Any], *, image_root: str | None = None,
                 remote_images: bool = False) -> str:
    """One mention's card as the run page shows it (for pages that show one result); style it
    with :data:`STYLE`."""
    return _card(rec, image_root, remote_images)


STYLE = _STYLE


def render_page(records: list[dict[str, Any]], *, title: str = "i2cr run",
                image_root: str | None = None, remote_images: bool = False) -> str:
    """One self-contained HTML page for a run: filters and one collapsed card per mention,
    wrong answers first."""
    order = {"bad": 0, "na": 1, "ok": 2}
    recs = sorted(records, key=lambda r: order["ok" if r.get("correct") else
                                                 "bad" if r.get("correct") is False else "na"])
    routes = sorted({r.get("final_reason") or "error" for r in recs})
    cards = [_card(r, image_root, remote_images) for r in recs]
    route_opts = "".join(f"<option value='{html.escape(x)}'>{html.escape(x)}</option>" for x in routes)
    wrong = sum(1 for r in recs if r.get("correct") is False)
    labelled = sum(1 for r in recs if "correct" in r)
    info = json.dumps({"mentions": len(recs)}).replace("<", "\\u003c")
    script_hash = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    img_src = "data:" + (" http: https:" if remote_images else "")
    csp = (f"default-src 'none'; img-src {img_src}; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{script_hash}'")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class='summary'>{len(recs)} mentions\
{f', {wrong} wrong of {labelled} labelled (shown first)' if labelled else ''}.
Click a card to see why it got its answer.</p>
<div class="controls">
<label><input type="checkbox" id="only-wrong"> wrong answers only</label>
<label>route <select id="route"><option value="">all</option>{route_opts}</select></label>
<label>stage change <select id="change"><option value="">all</option>
<option value="fixed_by_vif">fixed by VIF</option><option value="broken_by_vif">broken by VIF</option>
<option value="unchanged">unchanged</option></select></label>
<button id="expand-all" type="button">expand all</button>\
<button id="collapse-all" type="button">collapse all</button>
<span id="count"></span></div>
<main>{''.join(cards)}</main>
<script type="application/json" id="page-info">{info}</script>
<script>{_SCRIPT}</script></body></html>"""
