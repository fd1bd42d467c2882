"""The typed state of one mention's run through the graph.

``InputState`` is what a caller passes; ``State`` adds what the nodes write. Everything is plain
JSON-able data (no images, no models), so a checkpointer can store it and a trace can show it.

The TypedDicts come from ``typing_extensions``: on Python < 3.12 pydantic (and so LangGraph's
``get_input_jsonschema`` and the API server behind Studio) cannot build a schema from
``typing.TypedDict``.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any

from typing_extensions import TypedDict

from .events import Event


class CandidateDict(TypedDict, total=False):
    name: str
    desc: str
    qid: str
    prior: float
    aliases: list[str]  # other names it bears: the KB alias the mention matched (retrieve)


class Clue(TypedDict):
    tool: str
    text: str
    ok: bool


class Tried(TypedDict):
    name: str
    icr: float | None


class RoundAnswer(TypedDict, total=False):
    """One round's entry in ``rounds``: its answer as ICR accepted it (``icr``, its score),
    IAV's verdict on it, and, when hybrid TES's review replaced it, the ranker's answer."""
    round: int
    answer: str | None
    icr: float | None
    iav: float
    iav_passed: bool
    ranker_answer: str | None


class InputState(TypedDict, total=False):
    sample_id: str
    mention: str
    context: str
    image: str | None  # local path or URL
    candidates: list[CandidateDict]
    precomputed_clues: dict[str, Any] | None  # e.g. the dataset's mention_imgdesc_Azure
    allow_nil: bool
    document_mentions: list[str]  # the other mentions of its document (fuller names: Walters)


class OutputState(TypedDict, total=False):
    sample_id: str  # the input's, echoed for a caller matching outputs to inputs (no node reads it)
    answer: str | None
    is_nil: bool
    final_reason: str
    fallback: str  # what stood when no round passed IAV: 'text' or 'last'
    path: list[str]
    text_answer: str | None
    first_answer: str | None
    icr_score: float | None
    iav_score: float | None
    iav_mode: str | None
    llm_calls: int
    tools_used: list[str]
    events: list[Event]
    error: str | None
    text_icr: float | None
    iav_passed: bool | None
    rounds: list[RoundAnswer]
    clues: list[Clue]
    image_status: str
    image_reason: str | None
    tools_available: list[str]


class Ranked(TypedDict):
    """The ranker's view of one TES call (hybrid TES keeps its last, for the review to reuse):
    the round, the candidates offered (names, in the list's order), their order best first
    (indices into ``offered``) and their probabilities."""
    round: int
    offered: list[str]
    order: list[int]
    probs: list[float]


class Prepared(TypedDict):
    """The keys the ``prepare`` node writes for every mention, so every later node may read them
    without a default (``prepare`` also writes ``candidates`` and ``context``, always, cut to
    their caps)."""
    round: int  # 1 = text only, 2.. = after each VIF clue
    llm_calls: int
    error: str | None  # always None: a failed run raises and becomes an error record (linker)
    reflections: int  # ICR rejections in this round
    excluded: list[str]  # candidates ICR rejected in this round
    tried: list[Tried]  # choices tried this round with their ICR score
    choice: str | None  # current TES choice (a candidate name or "nil")
    first_answer: str | None  # TES's very first mapped answer
    text_answer: str | None  # round 1's answer
    icr_score: float | None
    iav_score: float | None
    iav_passed: bool | None
    rounds: list[RoundAnswer]  # per round: answer, icr, iav
    clues: list[Clue]  # every clue gathered, in order
    tools_used: list[str]
    vif_rounds: int
    answer: str | None
    image_status: str  # ok | absent | unused (not loaded: nothing reads it) | missing | corrupt | ...
    image_reason: str | None
    iav_mode: str | None
    visual_available: bool  # IAV can score something (an image with CLIP, or clues)
    tools_available: list[str]  # tools that can run for this mention, in fallback order


class State(InputState, Prepared, total=False):
    """The run's state: the input, what ``prepare`` guarantees (:class:`Prepared`), and what the
    nodes after it add."""

    # bookkeeping
    path: Annotated[list[str], operator.add]  # node visits, in order
    events: Annotated[list[Event], operator.add]  # what nodes decided and called (.events)

    # TES / ICR within a round
    # the last TES answer's raw text, for who watches the state (Studio); no node reads it (the
    # tes_answer events hold every raw answer)
    llm_answer: str | None
    # the round's query (mention, context, the round's clues: graph.texts.round_query) as the last
    # TES built it; ICR scores TES's choice against it
    query: str
    ranked: Ranked  # hybrid TES's last ranking
    icr_decision: str  # pass | reject_and_rechoose | exhausted_keep_best | nil_not_checked

    # round-1 result
    text_icr: float | None

    # VIF
    last_clue_ok: bool

    # result
    is_nil: bool
    final_reason: str
    fallback: str
