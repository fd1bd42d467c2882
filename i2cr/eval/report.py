"""The evaluation report: Markdown plus one PNG of accuracy per stage/round."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..data import shown_id
from .metrics import failed_downloads

STAGE_LABELS = {"first": "TES first answer", "icr": "after ICR (text answer)",
                "iav": "after IAV (round 1)", "final": "final"}


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def counted(kinds: dict[str, int]) -> str:
    """``"missing 2, timeout 1"``: counts by kind, in one phrase."""
    return ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))


def image_line(kinds: dict[str, int]) -> str | None:
    """One line on the images a run could not use (by why), or None when it used them all."""
    if not kinds:
        return None
    return (f"{sum(kinds.values())} mention(s) had an image that could not be used "
            f"({counted(kinds)}); they were linked without it (see image_reason)")


def unused_line(n: int) -> str | None:
    """One line on the images not loaded because no step of the run reads them (``image_status``
    'unused'), or None when there were none: said, so that a run whose IAV could not read its
    images (no CLIP weights, IAV off) does not pass for one that checked them."""
    if not n:
        return None
    return (f"{n} mention(s) had an image that no step of this run reads (IAV off or unable to "
            "run, or answered by precomputed clues): not loaded (see image_reason)")


def candidates_line(cuts: dict[Any, int]) -> str | None:
    """One line on the mentions whose candidate list was cut to ``max_candidates`` (counts by
    the cap, as :func:`~.metrics.candidate_cuts` gives them), or None when none was."""
    if not cuts:
        return None
    caps = sorted((int(k), v) for k, v in cuts.items())
    n = sum(v for _, v in caps)
    if len(caps) == 1:
        cap = caps[0][0]
        return (f"{n} mention(s) had more than max_candidates={cap} candidates: only the first "
                f"{cap} were ranked (see truncated)")
    return (f"{n} mention(s) had more than max_candidates candidates ("
            f"{', '.join(f'{v} cut to {k}' for k, v in caps)}): only the first max_candidates "
            "were ranked (see truncated)")


SHOWN_LABELS = 5  # the ids of labels naming no record that the warning quotes


def unmatched_labels(labels: Iterable[str], unmatched: Iterable[str]) -> dict[str, Any]:
    """What metrics.json keeps of a labels file's ids (``labels``) that name no record of the
    data (``unmatched``, in the file's order): how many labels, how many name no record, the
    first :data:`SHOWN_LABELS` of those."""
    first: list[str] = []
    count = 0
    for rid in unmatched:
        count += 1
        if len(first) < SHOWN_LABELS:
            first.append(rid)
    return {"labels": sum(1 for _ in labels), "count": count, "first": first}


def shown_ids(first: list[str], n: int) -> str:
    """The first ids of ``n`` records as a line quotes them, '...' when there are more."""
    return ", ".join(shown_id(i) for i in first) + (", ..." if n > len(first) else "")


# what comes of labels that name no record, in the words of the driver reading them: (some of
# the labels, every label)
LABEL_USES = {
    "scored": ("they are not scored", "nothing is scored against them"),  # link, eval
    "fitted": ("they are not used", "none of them is used"),  # calibrate, crossval
    "exported": ("they give no example", "none of them gives an example"),  # sft export
}


def labels_line(found: dict[str, Any] | None, use: str = "scored") -> str | None:
    """One line on the labels that name no record (:func:`unmatched_labels`), or None when each
    names one: a typo in an id, or labels of another split, are not scored, silently. The one
    rule for every driver that reads labels (``use``: its words, :data:`LABEL_USES`): every
    label, or some; the run's failure when no record at all has a gold label is
    :func:`record_failures`'."""
    if not found or not found.get("count"):
        return None
    some, every = LABEL_USES[use]
    n, total, first = found["count"], found["labels"], found.get("first") or []
    shown = shown_ids(first, n)
    if n >= total:
        return (f"none of the {total} label(s) names a record of the data ({shown}): {every} "
                "(labels of another dataset or split?)")
    return (f"{n} of the {total} label(s) name no record of the data ({shown}): {some} "
            "(a typo in an id, or labels of another split?)")


def refused_line(refused: int, calls: int) -> str | None:
    """One line on the LLM calls refused after every retry (each ended its mention as an error
    record), among the ``calls`` made, or None when none was: the one rule for ``link``'s closing
    lines and ``eval``'s."""
    if not refused:
        return None
    return (f"{refused} LLM call(s) refused after every retry, of {calls} made (a refused call "
            "counts as one call made, its attempts are in its record's error)")


SHOWN_CAUSES = 3  # the causes of failed records named one line each; then a count of the rest


def failed_lines(causes: dict[str, dict[str, Any]] | None) -> list[str]:
    """One line per cause records failed with in the run (:func:`~.metrics.add_failure`), most
    records first: how many, the first ids, the cause once (no secret, no local path: the
    records' ``error`` keeps the whole text); after :data:`SHOWN_CAUSES`, one line counts the
    rest. The one rule for ``link``'s closing lines and ``eval``'s."""
    ranked = sorted((causes or {}).items(), key=lambda kv: -kv[1]["count"])
    out = []
    for cause, got in ranked[:SHOWN_CAUSES]:
        n, first = got["count"], got.get("first") or []
        ids = shown_ids(first, n)
        out.append(f"{n} record(s) failed in the run ({ids}): {cause}")
    rest = ranked[SHOWN_CAUSES:]
    if rest:
        out.append(f"{sum(g['count'] for _, g in rest)} more record(s) failed in the run, with "
                   f"{len(rest)} other cause(s) (see their error)")
    return out


def failures(metrics: dict[str, Any]) -> list[str]:
    """What went wrong in a run, one phrase each (empty when nothing did): those of its records
    (:func:`record_failures`), the causes of those that failed in the run (:func:`failed_lines`),
    then each cache that failed (:func:`cache_lines`). Each fails the run (``i2cr eval`` exits
    1)."""
    return (record_failures(metrics) + failed_lines(metrics.get("failed_by_cause"))
            + cache_lines(metrics))


def record_failures(metrics: dict[str, Any]) -> list[str]:
    """What went wrong with a run's records: no record labelled, error records, which count as
    wrong answers, LLM calls refused after every retry (:func:`refused_line`), mentions answered
    by a fallback after a failed LLM call, failed image downloads, free-text answers to
    structured requests."""
    out = []
    if metrics.get("mentions") and not metrics.get("labelled"):  # (a labels file of other ids)
        out.append(f"none of the {metrics['mentions']} record(s) has a gold label (does the "
                   "labels file name the dataset's ids?): nothing was scored")
    if metrics.get("errors"):
        out.append(f"{metrics['errors']} error record(s) "
                   f"({metrics.get('labelled_errors', 0)} labelled, each scored as a wrong answer)")
    c = metrics.get("cost", {})
    refused = refused_line(c.get("llm_refused_calls", 0), c.get("llm_calls", 0))
    if refused:
        out.append(refused)
    if metrics.get("llm_failed_mentions"):
        out.append(f"{metrics['llm_failed_mentions']} mention(s) with failed LLM calls "
                   f"({c.get('llm_failed_calls', 0)} calls; {c.get('tes_fallbacks', 0)} TES "
                   "answers from the embedding fallback, not the LLM)")
    downloads = failed_downloads(metrics.get("image_failures") or {})
    if downloads:
        out.append(f"{sum(downloads.values())} mention(s) whose image download failed "
                   f"({counted(downloads)}; linked without it, see image_reason)")
    if metrics.get("structured_fallback_mentions"):
        out.append(f"{metrics['structured_fallback_mentions']} mention(s) asked for structured "
                   "answers got free text (see the tes_answer events' structured_error)")
    return out


def cache_lines(metrics: dict[str, Any]) -> list[str]:
    """One phrase per cache that failed in the run (``cache_failures``), in the words of the
    closing line (the answers were recomputed without it, but the run failed to use it)."""
    return [f"cache failure, {r}" for r in (metrics.get("cache_failures") or {}).get("reasons", [])]


def stage_rows(metrics: dict[str, Any]) -> list[tuple[str, float | None]]:
    rows = []
    for k, v in metrics["accuracy"].items():
        label = STAGE_LABELS.get(k) or f"after VIF round {k.split('_')[1]}"
        rows.append((label, v))
    return rows


def write_png(metrics: dict[str, Any], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(lab, v) for lab, v in stage_rows(metrics) if v is not None]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    xs = range(len(rows))
    vals = [100 * v for _, v in rows]
    ax.plot(list(xs), vals, marker="o", color="#3b5bdb")
    for x, v in zip(xs, vals, strict=True):
        ax.annotate(f"{v:.1f}", (x, v), textcoords="offset points", xytext=(0, 7), ha="center",
                    fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([lab.replace(" (", "\n(") for lab, _ in rows], rotation=30, ha="right",
                       fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    lo = min(vals) if vals else 0
    ax.set_ylim(max(0, lo - 5), min(100, max(vals or [100]) + 4))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "Accuracy by stage", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def iav_modes_text(modes: dict[str, int]) -> str:
    """How many mentions IAV checked in each mode, most first ('caption 3, none 1'; 'none': IAV
    could not run), as report.md says it."""
    return ", ".join(f"{k} {v}" for k, v in sorted(modes.items(), key=lambda kv: -kv[1])) or "-"


def markdown(metrics: dict[str, Any], info: dict[str, Any]) -> str:
    lines = [f"# i2cr evaluation: {info.get('dataset', '')}", ""]
    bad = record_failures(metrics)
    if bad:
        lines += [f"**{'; '.join(bad)}.**", ""]
    # (each a sentence of its own: a cause or a cache's reason may hold semicolons)
    for failed in failed_lines(metrics.get("failed_by_cause")) + cache_lines(metrics):
        lines += [f"**{failed[0].upper()}{failed[1:].rstrip('.')}.**", ""]
    for said in (labels_line(metrics.get("labels_unmatched")),
                 candidates_line(metrics.get("candidate_cuts") or {}),
                 image_line(metrics.get("image_failures") or {}),
                 unused_line(metrics.get("images_unused") or 0)):
        if said:
            lines += [f"{said[0].upper()}{said[1:]}.", ""]
    lines += [f"- command: `{info.get('command', '')}`",
              f"- mentions: {metrics['mentions']} ({metrics['labelled']} labelled, "
              f"{metrics['errors']} errors)",
              f"- candidate order: {info.get('order', '')}",
              f"- strategy: {info.get('strategy', '')}; LLM: {info.get('llm', '')}; "
              f"IAV modes: {iav_modes_text(metrics.get('iav_modes') or {})}",
              f"- machine: {info.get('machine', '')}", ""]
    lines += ["## Top-1 accuracy by stage", "", "| stage | accuracy (%) |", "|---|---|"]
    lines += [f"| {lab} | {_pct(v)} |" for lab, v in stage_rows(metrics)]
    g = metrics["iav_gate"]
    lines += ["", f"IAV gate (round 1): checked {g['checked']}, pass rate {_pct(g['pass_rate'])}%, "
              f"accuracy of passed answers {_pct(g['accuracy_of_passed'])}%, of failed "
              f"{_pct(g['accuracy_of_failed'])}%.",
              f"VIF changed {metrics['vif_changes']['changed']} answers: "
              f"{metrics['vif_changes']['fixed']} fixed, {metrics['vif_changes']['broken']} broken.", ""]
    if "nil" in metrics:
        n = metrics["nil"]
        lines += [f"NIL: {n['gold']} gold, {n['predicted']} predicted, precision "
                  f"{_pct(n['precision'])}%, recall {_pct(n['recall'])}%.", ""]
    c, s = metrics["cost"], metrics["speed"]
    lines += ["## Cost and speed", "", "| measure | value |", "|---|---|",
              f"| LLM calls / mention | {_num(c['llm_calls_per_mention'])} |",
              f"| tokens / mention | {_num(c['tokens_per_mention'], '{:.0f}')} |",
              f"| tool calls / mention | {_num(c['tool_calls_per_mention'])} |",
              f"| failed LLM calls (total) | {c.get('llm_failed_calls', 0)} |",
              f"| LLM calls refused after every retry (total, each an error record) | "
              f"{c.get('llm_refused_calls', 0)} |",
              f"| TES fallbacks to the embedding ranking (total) | {c.get('tes_fallbacks', 0)} |",
              f"| latency p50 / p95 (s) | {_num(s['latency_p50_s'], '{:.3f}')} / "
              f"{_num(s['latency_p95_s'], '{:.3f}')} |",
              f"| mentions / s, linking phase | {_num(s['mentions_per_s'])} |",
              f"| mentions / s, whole run (loading and embedding included) | "
              f"{_num(s.get('run_mentions_per_s', s['mentions_per_s']))} |",
              f"| wall time (s) | {_num(s['wall_s'], '{:.1f}')} |"]
    seg = s.get("segment")
    if seg:
        lines += [f"| last segment: mentions linked / loading / embedding ({seg['embedded_texts']} "
                  f"texts) / linking (s) | {seg['linked']} / {_num(seg['load_s'], '{:.1f}')} / "
                  f"{_num(seg['embed_s'], '{:.1f}')} / {_num(seg['link_s'], '{:.1f}')} |"]
    lines += [""]
    lines += ["## Routes", "", "| final reason | mentions |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in metrics["routes"].items()]
    lines += ["", "| path (TES/ICR/IAV/VIF) | mentions |", "|---|---|"]
    lines += [f"| `{k or '(none)'}` | {v} |" for k, v in metrics["paths"].items()]
    lines += ["", "![accuracy by stage](stages.png)", ""]
    return "\n".join(lines)
