"""What ``i2cr eval --kb`` reports about the candidate generator: recall@k (the gold among the
generated candidates), end-to-end top-1, query latency, and the index's build time and size."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..data import NIL, title_key
from .index import dir_size, open_kb

RECALL_AT = (1, 5, 10, 20, 50)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(v) - 1)
    return round(v[lo] + (v[hi] - v[lo]) * (pos - lo), 2)


def kb_metrics(records: Iterable[dict[str, Any]], kb_dir: str) -> dict[str, Any]:
    kb = open_kb(kb_dir)
    # names compared as ``correct`` compares them (data.same_entity): 'Michael_Jordan' is
    # 'Michael Jordan'
    names = {title_key(str(n)) for n in kb.table.to_arrow().column("name").to_pylist()}
    recs = [r for r in records if "gold" in r]
    # a record whose gold label was unusable (gold null: an error record) names no entity
    linkable = [r for r in recs if isinstance(r["gold"], str) and title_key(r["gold"]) != NIL]
    in_kb = [r for r in linkable if title_key(r["gold"]) in names]
    hits = {k: 0 for k in RECALL_AT}
    lat: list[float] = []
    for r in linkable:
        ev = next((e for e in r.get("events") or [] if e.get("type") == "kb_candidates"), None)
        if ev is None:
            continue
        lat.append(float(ev.get("latency_ms") or 0.0))
        ranked = [title_key(str(n)) for n in ev.get("ranked") or []]
        gold = title_key(r["gold"])
        for k in RECALL_AT:
            hits[k] += gold in ranked[:k]
    correct = sum(bool(r.get("correct")) for r in recs)
    meta = kb.meta
    return {
        "kb": str(kb.path), "entities": meta.get("entities"), "embedder": meta.get("embedder"),
        "top_k": None, "labelled": len(recs), "linkable": len(linkable),
        "gold_in_kb": len(in_kb),
        "recall_in_kb": {str(k): (hits[k] / len(in_kb) if in_kb else None) for k in RECALL_AT},
        "recall_all": {str(k): (hits[k] / len(linkable) if linkable else None) for k in RECALL_AT},
        "top1": correct / len(recs) if recs else None,
        "latency_ms_p50": _pct(lat, 0.5), "latency_ms_p95": _pct(lat, 0.95),
        "build_s": meta.get("build_s"), "size_bytes": dir_size(kb.path), "ann": meta.get("ann"),
    }


def kb_lines(k: dict[str, Any]) -> list[str]:
    """The KB section as plain lines (the CLI and report.md print them)."""
    r, top1 = k["recall_in_kb"], k["top1"]
    rec = ", ".join(f"@{n} {'—' if v is None else f'{100 * v:.1f}%'}" for n, v in r.items())
    return [
        f"KB {k['kb']}: {k['entities']:,} entities ({k['embedder']}), built in {k['build_s']}s, "
        f"{k['size_bytes'] / 2 ** 20:.1f} MB{', ANN index' if k.get('ann') else ''}",
        f"generator recall (gold in KB: {k['gold_in_kb']} of {k['linkable']} linkable): {rec}",
        f"end-to-end top-1 {'—' if top1 is None else f'{100 * top1:.1f}%'} "
        f"({k['labelled']} labelled, NIL counted); KB query p50 {k['latency_ms_p50']} ms, "
        f"p95 {k['latency_ms_p95']} ms",
    ]
