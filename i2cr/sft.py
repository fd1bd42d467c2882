"""Fine-tuning data for TES: the prompts the graph sends, with the gold as the answer.

``i2cr sft export DATA LABELS --out train.jsonl --format openai|sharegpt|alpaca`` writes, per
labelled record, the TES calls an LLM run makes, built by the same prompt profile
(``--prompt-profile``, :mod:`i2cr.prompts.profiles`):

- ``round1``: mention, context and every candidate;
- ``clue:<tool>``: one per visual clue the record holds (``mention_imgdesc_Azure``), in the order
  VIF's fixed order gathers them, each round carrying its own clue (``clue_mode`` 'cumulative'
  carries every clue so far, as such a run would);
- ``rechoice``: after ICR rejected a candidate: a random wrong one left out and named;
- ``nil``: where the record allows NIL and the gold is a candidate, the gold left out and ``nil``
  as the answer (a record whose gold is ``nil`` answers nil in every form).

Each example's candidates are shuffled (seeded by ``seed`` and the record id, so an export is the
same for a seed whatever else the file holds) and the answer is the gold written as the profile
asks for it. The context and the candidate list are cut as the graph cuts them
(``max_context_chars``, ``max_candidates``), descriptions as its prompts do (``desc_chars``).

A bad record (unreadable, no gold label, a repeated id) is reported in one line naming it and
counted; the others are exported; labels that name no record are counted in one warning line,
as ``link`` and ``eval`` count them. A record whose gold is not among its candidates (and not
``nil``), 62 of WikiMEL dev's 1,030, has no answer to teach: it is skipped and counted as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import NIL, DataError, Mention, load_labels, load_mentions, same_entity
from .eval.runner import Warn, check_input, warn_stderr
from .graph.context import Context
from .graph.texts import clue_sequence
from .prompts import profile
from .texts import cut_context

FORMATS = ("openai", "sharegpt", "alpaca")


class GoldNotOffered(DataError):
    """The record's gold is neither a candidate nor ``nil``: nothing to teach, not an error."""


@dataclass(frozen=True)
class Example:
    record: str
    form: str  # round1 | clue:<tool> | rechoice | nil
    system: str
    user: str
    answer: str


@dataclass
class ExportStats:
    records: int = 0  # records read (good and bad)
    exported: int = 0  # records that gave examples
    examples: int = 0
    forms: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # one line per bad record
    skipped: list[str] = field(default_factory=list)  # ids whose gold is not a candidate

    @property
    def failed(self) -> int:
        return len(self.errors)


def _rng(seed: int, rid: str) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest()[:16], 16))


def examples_for(m: Mention, settings: Context, seed: int = 0,
                 source: str | None = None) -> list[Example]:
    """The TES training examples of one labelled mention (raises :class:`DataError` naming the
    record when it has no usable gold)."""
    if m.label is None:
        raise DataError("has no gold label", source=source, record=m.id)
    cands = [c.to_dict() for c in m.candidates][: settings.max_candidates]
    # the gold candidate by the rule the record's ``correct`` uses (candidate names are unique
    # up to case: parse_candidates dropped the repeats)
    gold = NIL if same_entity(m.label, NIL) else \
        next((c["name"] for c in cands if same_entity(c["name"], m.label)), None)
    if gold is None:
        raise GoldNotOffered(f"gold {m.label!r} is not among its candidates"[:200],
                             source=source, record=m.id)
    prof = profile(settings.prompt_profile)
    rng = _rng(seed, m.id)
    context = cut_context(m.context, settings)
    out: list[Example] = []

    def add(form: str, offered: list[dict[str, Any]], answer: str, *,
            clues: Sequence[Any] = (), excluded: Sequence[str] = (), allow_nil: bool = False) -> None:
        offered = list(offered)
        rng.shuffle(offered)
        system, user = (msg.content for msg in prof.build(
            mention=m.mention, context=context, candidates=offered, excluded=excluded,
            clues=clues, allow_nil=allow_nil, desc_chars=settings.desc_chars))
        out.append(Example(m.id, form, str(system), str(user), prof.answer(answer)))

    nil_ok = m.allow_nil or gold == NIL
    add("round1", cands, gold, allow_nil=nil_ok)
    seq = clue_sequence(m.clues, settings.tool_names)
    cumulative = settings.clue_mode == "cumulative"  # 'auto' is 'round' for an LLM
    for i, clue in enumerate(seq):
        add(f"clue:{clue['tool']}", cands, gold, clues=seq[: i + 1] if cumulative else [clue],
            allow_nil=nil_ok)
    wrong = [c for c in cands if c["name"] != gold]
    if wrong:
        x = rng.choice(wrong)["name"]
        add("rechoice", [c for c in cands if c["name"] != x], gold, excluded=[x], allow_nil=nil_ok)
    if m.allow_nil and gold != NIL:
        add("nil", [c for c in cands if c["name"] != gold], NIL, allow_nil=True)
    return out


def as_record(ex: Example, fmt: str) -> dict[str, Any]:
    """One example in a fine-tuning format: OpenAI chat (``messages``), ShareGPT as LLaMA-Factory
    reads it (``conversations`` + ``system``) or Alpaca (``instruction``/``input``/``output`` +
    ``system``)."""
    if fmt == "openai":
        return {"messages": [{"role": "system", "content": ex.system},
                             {"role": "user", "content": ex.user},
                             {"role": "assistant", "content": ex.answer}]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": ex.user},
                                  {"from": "gpt", "value": ex.answer}], "system": ex.system}
    if fmt == "alpaca":
        return {"instruction": ex.user, "input": "", "output": ex.answer, "system": ex.system}
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def iter_examples(data: str | Path, labels: str | Path, settings: Context, *, seed: int = 0,
                  stats: ExportStats | None = None,
                  warn: Warn | None = warn_stderr) -> Iterator[Example]:
    """Every example of a dataset, in file order; bad records go to ``stats.errors`` (named by
    :func:`export`), the labels that name no record are warned of through ``warn``
    (:func:`~i2cr.eval.runner.check_input`)."""
    st = stats if stats is not None else ExportStats()
    gold = load_labels(labels)
    items, _ = check_input(load_mentions(data, gold, strict=False), gold, warn=warn,
                           named=False, use="exported")
    for it in items:
        st.records += 1
        try:
            if isinstance(it, DataError):
                raise it
            got = examples_for(it, settings, seed, source=str(data))
        except GoldNotOffered:
            st.skipped.append(it.id if isinstance(it, Mention) else "?")
            continue
        except DataError as e:
            st.errors.append(str(e).splitlines()[0])
            continue
        st.exported += 1
        for ex in got:
            st.examples += 1
            st.forms[ex.form.split(":")[0]] += 1
            yield ex


def export(data: str | Path, labels: str | Path, out: str | Path, *, fmt: str = "openai",
           settings: Context | None = None, seed: int = 0,
           warn: Callable[[str], None] | None = None) -> ExportStats:
    """Write the examples as JSONL to ``out`` (whole or not at all: a temporary file renamed);
    ``warn`` names each bad record after (the labels naming no record are warned of on stderr
    as the records are read: :func:`iter_examples`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    settings = settings or Context()
    stats = ExportStats()
    out = Path(out)
    if out.is_dir():
        raise DataError("--out names a folder; give a file path", source=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for ex in iter_examples(data, labels, settings, seed=seed, stats=stats):
                fh.write(json.dumps(as_record(ex, fmt), ensure_ascii=False) + "\n")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if warn is not None:
        for e in stats.errors:
            warn(e)
    return stats
