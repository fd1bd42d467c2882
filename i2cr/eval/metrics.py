"""Metrics of a run, computed from its per-mention result records alone.

Stages (top-1 accuracy over every labelled mention; errors count as wrong):

- ``first``: TES's very first answer;
- ``icr``: round 1 after ICR (the text answer);
- ``iav``: after round 1's IAV. IAV never changes an answer, it decides whether VIF runs, so this
  equals ``icr``; the gate's own quality is reported as its pass rate and the accuracy of the
  answers it passed;
- ``vif_k``: the answer if the run had stopped after k VIF iterations: the first round <= k+1
  whose answer passed IAV, else the text answer (or, for a run with ``fallback='last'``, the
  answer of the last round <= k+1);
- ``final``: the answer given.

Every labelled record is in the denominator: a record that failed to load or to link (an error
record, with its gold label) is a wrong answer at every stage; ``errors`` counts them, and
``llm_failed_mentions`` counts the mentions whose answer came from a fallback after a failed LLM
call. ``failed_by_cause`` groups the records that failed in the run (not those of the input,
named as they were read) by their cause, with the first ids; a call refused after every retry
ends its mention as an error record and counts as one LLM call (``cost.llm_refused_calls``).

``cache_failures`` (added by the harness, not from the records) are the caches that failed in
the run's last segment: how many, and what went wrong with each, as the closing line says it.

Speed counts the mentions linked (an error record is not one). With the stats of the run segment
that produced the records (``segment``, after a resume the last invocation only),
``mentions_per_s`` is the linking phase's throughput and ``run_mentions_per_s`` that of the
whole segment, model loading and embedding included.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..data import DataError, LabelError, same_entity as _eq
from ..graph.final import settle
from ..redact import cause_text

if TYPE_CHECKING:
    from ..store import Failure


def answer_after_vif(rec: dict[str, Any], k: int) -> str | None:
    """The answer had the run stopped after ``k`` VIF iterations (round k+1)."""
    upto = [r for r in rec.get("rounds") or [] if r.get("round", 1) <= k + 1]
    return settle(upto, rec.get("text_answer"), rec.get("fallback") or "text")


def llm_failed(rec: dict[str, Any]) -> bool:
    """Whether a record has a failed LLM call (its answer then came from a fallback)."""
    return any(e.get("type") == "llm_error" for e in rec.get("events") or [])


def llm_refused(rec: dict[str, Any]) -> bool:
    """Whether a record is the error record of a mention ended by an LLM call refused after every
    retry (:class:`~i2cr.llm.LLMCallFailed`, the only error whose record has ``llm_calls``): one
    refused call, counted among the mention's calls."""
    return rec.get("error") is not None and bool(rec.get("llm_calls"))


# the error records of the input (a bad record, an unusable gold label, a repeated id): each was
# named as it was read, by its own line; their error texts start with the error's type
INPUT_ERRORS = tuple(f"{c.__name__}: " for c in (DataError, LabelError))
SHOWN_FAILED = 5  # the ids of the records that failed with one cause that its line quotes


def failure_cause(rec: dict[str, Any]) -> str | None:
    """The cause a record failed with in the run, as a closing line names it once for all the
    records it struck (:func:`~i2cr.redact.cause_text`: no secret, no local path), or None: no
    error, or an error of the input (named as it was read)."""
    err = rec.get("error")
    if err is None or str(err).startswith(INPUT_ERRORS):
        return None
    return cause_text(err)


def add_failure(causes: dict[str, dict[str, Any]], rec: dict[str, Any]) -> None:
    """Count ``rec`` under its :func:`failure_cause` in ``causes`` (cause -> ``count`` and the
    ``first`` :data:`SHOWN_FAILED` ids, in the order the records came), when it has one."""
    cause = failure_cause(rec)
    if cause is None:
        return
    got = causes.setdefault(cause, {"count": 0, "first": []})
    got["count"] += 1
    if len(got["first"]) < SHOWN_FAILED:
        got["first"].append(str(rec.get("id")))


def failures_by_cause(recs: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What metrics.json keeps of the records that failed in the run (:func:`add_failure`)."""
    causes: dict[str, dict[str, Any]] = {}
    for r in recs:
        add_failure(causes, r)
    return causes


def image_failure(rec: dict[str, Any]) -> str | None:
    """Why a record's image could not be used (its ``image_status``: missing, corrupt,
    unsupported, unreachable, timeout, refused), or None when it was used, there was none, or no
    step of the run would read it (``unused``: not loaded). The mention was then linked without
    it."""
    status = rec.get("image_status")
    return None if status in (None, "ok", "absent", "unused") else str(status)


def linked_count(produced: int, errors: int) -> int:
    """The mentions linked among the records produced: an error record is not one (the one rule
    for the closing line, the speed, the results' ``linked`` and the server's ``/health``)."""
    return produced - errors


def candidate_cut(rec: dict[str, Any]) -> int | None:
    """The ``max_candidates`` a record's candidate list was cut to (its ``truncated`` entry for
    ``candidates``: the candidates after the first ``to`` were not ranked), or None when every
    candidate was."""
    for t in rec.get("truncated") or []:
        if isinstance(t, dict) and t.get("field") == "candidates":
            return int(t["to"])
    return None


def candidate_cuts(recs: Iterable[dict[str, Any]]) -> dict[int, int]:
    """The records whose candidate list was cut, counted by the ``max_candidates`` it was cut to
    (:func:`candidate_cut`)."""
    return dict(sorted(Counter(c for r in recs if (c := candidate_cut(r)) is not None).items()))


# a failed download fails the run (exit 1); an image missing from disk, corrupt, unsupported or
# refused by the policy is the input's, reported with the rest but not a failure of the run
FAILED_DOWNLOADS = ("timeout", "unreachable")


def image_failures(recs: Iterable[dict[str, Any]]) -> dict[str, int]:
    """The records whose image could not be used, counted by why (:func:`image_failure`)."""
    return dict(sorted(Counter(w for r in recs if (w := image_failure(r)) is not None).items()))


def image_unused(rec: dict[str, Any]) -> bool:
    """Whether a record's image was not loaded because no step of the run reads it
    (``image_status`` 'unused': IAV off or unable to run, or answered by precomputed clues)."""
    return rec.get("image_status") == "unused"


def failed_downloads(kinds: dict[str, int]) -> dict[str, int]:
    """The part of :func:`image_failures`' counts that fails a run: the failed downloads."""
    return {k: v for k, v in kinds.items() if k in FAILED_DOWNLOADS}


def cache_failures(found: Iterable[Failure]) -> dict[str, Any]:
    """What metrics.json keeps of the caches that failed in a run (:func:`i2cr.store.failures`):
    how many, and one phrase each as the closing line says it (no folder: the warning named
    it; the reason scrubbed of secrets where it was made)."""
    reasons = [f.phrase() for f in found]
    return {"count": len(reasons), "reasons": reasons}


def structured_fallback(rec: dict[str, Any]) -> bool:
    """Whether a TES answer asked for with a JSON schema came back as free text (the backend took
    no schema, refused it, or answered outside it): the event's ``structured_error`` says why."""
    return any(e.get("type") == "tes_answer" and e.get("structured_error")
               for e in rec.get("events") or [])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _tokens(rec: dict[str, Any]) -> int:
    return sum(int(e.get("tokens") or 0) for e in rec.get("events") or []
               if e.get("type") in ("tes_answer", "vif_request"))


def path_signature(path: list[str]) -> str:
    return ">".join(p for p in path if p not in ("prepare", "final"))


def compute(records: Iterable[dict[str, Any]], *, wall_s: float | None = None,
            max_vif: int = 4, segment: Any = None) -> dict[str, Any]:
    recs = list(records)
    labelled = [r for r in recs if "gold" in r]
    n = len(labelled)
    m: dict[str, Any] = {"mentions": len(recs), "labelled": n,
                         "errors": sum(1 for r in recs if r.get("error")),
                         "labelled_errors": sum(1 for r in labelled if r.get("error")),
                         "llm_failed_mentions": sum(1 for r in recs if llm_failed(r)),
                         "failed_by_cause": failures_by_cause(recs),
                         "structured_fallback_mentions": sum(1 for r in recs
                                                             if structured_fallback(r)),
                         "image_failures": image_failures(recs),
                         "images_unused": sum(1 for r in recs if image_unused(r)),
                         "candidate_cuts": candidate_cuts(recs)}

    def acc(get) -> float | None:
        if not n:
            return None
        return sum(1 for r in labelled if not r.get("error") and _eq(get(r), r["gold"])) / n

    stages = {"first": acc(lambda r: r.get("first_answer")),
              "icr": acc(lambda r: r.get("text_answer")),
              "iav": acc(lambda r: r.get("text_answer"))}
    for k in range(1, max_vif + 1):
        stages[f"vif_{k}"] = acc(lambda r, k=k: answer_after_vif(r, k))
    stages["final"] = acc(lambda r: r.get("answer"))
    m["accuracy"] = stages

    ok = [r for r in labelled if not r.get("error")]
    r1 = [r for r in ok if (r.get("rounds") or [{}])[0].get("iav_passed") is not None]
    passed = [r for r in r1 if r["rounds"][0].get("iav_passed")]
    m["iav_gate"] = {
        "checked": len(r1),
        "pass_rate": len(passed) / len(r1) if r1 else None,
        "accuracy_of_passed": (sum(_eq(r["text_answer"], r["gold"]) for r in passed) / len(passed)
                               if passed else None),
        "accuracy_of_failed": (sum(_eq(r["text_answer"], r["gold"]) for r in r1 if r not in passed)
                               / (len(r1) - len(passed)) if len(r1) > len(passed) else None),
    }
    vif_changed = [r for r in ok if r.get("answer") != r.get("text_answer")]
    m["vif_changes"] = {
        "changed": len(vif_changed),
        "fixed": sum(1 for r in vif_changed if _eq(r["answer"], r["gold"])),
        "broken": sum(1 for r in vif_changed if _eq(r["text_answer"], r["gold"])),
    }

    gold_nil = [r for r in labelled if _eq(r["gold"], "nil")]
    pred_nil = [r for r in labelled if _eq(r.get("answer"), "nil")]
    if gold_nil:
        tp = sum(1 for r in pred_nil if _eq(r["gold"], "nil"))
        prec = tp / len(pred_nil) if pred_nil else None
        rec = tp / len(gold_nil)
        m["nil"] = {"gold": len(gold_nil), "predicted": len(pred_nil), "precision": prec,
                    "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec and rec else 0.0}
    # the accuracy on mentions whose gold is an entity (for data whose NIL gold means "the gold
    # is not among the candidates", this is top-1 where the gold is a candidate)
    linked = [r for r in labelled if not _eq(r["gold"], "nil")]
    m["accuracy_non_nil_gold"] = (sum(1 for r in linked if not r.get("error")
                                      and _eq(r.get("answer"), r["gold"])) / len(linked)
                                  if linked else None)

    k = max(len(recs), 1)
    calls = sum(r.get("llm_calls") or 0 for r in recs)  # a refused call counted as one call
    m["cost"] = {"llm_calls_per_mention": calls / k, "llm_calls": calls,
                 # calls refused after every retry (each ended its mention: an error record)
                 "llm_refused_calls": sum(1 for r in recs if llm_refused(r)),
                 "tokens_per_mention": sum(_tokens(r) for r in recs) / k,
                 "tool_calls_per_mention": sum(len(r.get("tools_used") or []) for r in recs) / k,
                 # failed LLM calls (errors, timeouts): their answers came from the fallbacks
                 "llm_failed_calls": sum(1 for r in recs for e in r.get("events") or []
                                         if e.get("type") == "llm_error"),
                 "tes_fallbacks": sum(1 for r in recs for e in r.get("events") or []
                                      if e.get("type") == "tes_fallback")}
    lat = [float(r["elapsed_s"]) for r in recs if r.get("elapsed_s") is not None]
    m["speed"] = {"latency_p50_s": percentile(lat, 0.5), "latency_p95_s": percentile(lat, 0.95),
                  "wall_s": wall_s,
                  "mentions_per_s": (linked_count(len(recs), m["errors"]) / wall_s) if wall_s
                  else None}
    if segment is not None:  # a RunStats: the invocation that produced the newest records
        seg = segment.as_dict() if hasattr(segment, "as_dict") else dict(segment)
        m["speed"].update(
            mentions_per_s=seg.get("linking_mentions_per_s"),
            run_mentions_per_s=seg.get("run_mentions_per_s"),
            segment={k: v for k, v in seg.items() if k in (
                "linked", "load_s", "embedded_texts", "embed_s", "link_s", "wall_s")})
    m["routes"] = dict(Counter(r.get("final_reason") or "error" for r in recs).most_common())
    m["paths"] = dict(Counter(path_signature(r.get("path") or []) for r in recs).most_common(8))
    # how many mentions IAV checked in each mode ('none': IAV could not run for it)
    m["iav_modes"] = dict(Counter(str((r.get("scores") or {}).get("iav_mode") or "none")
                                  for r in recs))
    return m
