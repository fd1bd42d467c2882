"""Mapping an LLM's free-text answer onto one candidate name (or NIL) with rapidfuzz."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz import fuzz, process, utils

from .data import NIL, title_key

ANSWER_MARKER = "Answer:"
# 'Answer:' and the paper adapter's '<|ANSWER|>:' (i2cr.prompts.paper)
_MARKER_RE = re.compile(r"answer(?:\|>)?\s*[:：]\s*(.+)", re.IGNORECASE)
_NIL_WORDS = {"nil", "none", "none of the above", "none of them", "no match", "null", "n/a"}
FUZZY_CUTOFF = 60.0


@dataclass(frozen=True)
class Match:
    name: str | None  # the candidate, "nil", or None when nothing fits
    method: str  # exact | number | contained | fuzzy | nil | none
    score: float


def extract_answer(text: str) -> str:
    """The part after the last answer marker, or the whole text when there is no marker."""
    text = (text or "").strip()
    found = _MARKER_RE.findall(text)
    ans = found[-1] if found else text
    ans = ans.strip().splitlines()[0] if ans.strip() else ""
    return ans.strip().strip("*\"'`.[]").strip()


def map_answer(text: str, names: Sequence[str], *, allow_nil: bool = False,
               cutoff: float = FUZZY_CUTOFF) -> Match:
    """Exact name first (after a leading candidate number, if any), then a candidate number, then
    a name contained in the answer, then the best fuzzy match above ``cutoff``. Anything else is
    ``Match(None, 'none', score)``. Names are compared as titles (:func:`i2cr.data.title_key`:
    ``Paris (mythology)`` names the candidate ``Paris_(mythology)``, not ``Paris``)."""
    ans = extract_answer(text)
    if not ans or not names:
        return Match(None, "none", 0.0)
    low = ans.lower()
    if allow_nil and low.strip(" .") in _NIL_WORDS:
        return Match(NIL, "nil", 100.0)
    key = title_key(ans)
    keys = [title_key(n) for n in names]
    for n, k in zip(names, keys, strict=True):
        if k == key:
            return Match(n, "exact", 100.0)
    m = re.fullmatch(r"\(?#?(\d{1,3})[).]?(?:\s.*)?", ans)
    if m and 1 <= int(m.group(1)) <= len(names):
        # the number's ')' or '.' go, not the name's own closing ')' ('2. Iron Man (film)')
        rest = ans[m.end(1):].lstrip(" ).").rstrip(" .")
        n = names[int(m.group(1)) - 1]
        named = [x for x, k in zip(names, keys, strict=True) if rest and k == title_key(rest)]
        if named:  # a number with a name: the name decides ('3. Ed Rendell' when 3 is another)
            return Match(named[0], "exact", 100.0)
        if not rest or fuzz.WRatio(rest, n, processor=utils.default_process) >= cutoff:
            return Match(n, "number", 100.0)
    contained = [(len(k), n) for n, k in zip(names, keys, strict=True) if k and k in key]
    if contained:
        return Match(max(contained, key=lambda c: c[0])[1], "contained", 100.0)
    best = process.extractOne(ans, list(names), scorer=fuzz.WRatio, processor=utils.default_process)
    if best and best[1] >= cutoff:
        return Match(best[0], "fuzzy", float(best[1]))
    if allow_nil and any(w in low for w in ("none of", "no candidate", "not in the list", "nil")):
        return Match(NIL, "nil", 80.0)
    return Match(None, "none", float(best[1]) if best else 0.0)
