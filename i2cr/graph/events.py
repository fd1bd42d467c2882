"""The events of a mention's run, one typed kind each: what a node decided, fell back on or called.

Each kind is a ``TypedDict`` whose ``type`` is a ``Literal``; :data:`EVENT_TYPES` is the table of
them, :data:`Event` their union (the element type of the state's ``events``).

One channel: a node returns its events in its update, under ``events`` (``Annotated[list[Event],
operator.add]`` in :class:`~i2cr.graph.state.State`), and nowhere else. So ``graph.invoke`` returns
them, a checkpoint keeps them, ``graph.stream(..., stream_mode="updates")`` shows each node's as it
finishes, and :mod:`i2cr.trace` builds a trace from that stream alone.

One event per fact. An LLM call is recorded once, by the event of what it gave (``tes_answer``,
``vif_request``) or of its failure (``llm_error``), carrying the call's ``latency_s``, its raw
reply and tokens, and, with the ``trace_prompts`` setting, its ``prompt`` (:func:`is_llm_call`).
A tool run is one ``tool_call`` (its full text is the state's clue).

The TypedDicts come from ``typing_extensions`` for the reason :mod:`i2cr.graph.state` gives,
and their annotations are evaluated (no ``from __future__ import annotations``), so that
``__required_keys__`` knows which keys are ``NotRequired``.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeAlias, TypeVar, cast

from typing_extensions import NotRequired, TypedDict


class Message(TypedDict):
    """One message of a prompt as recorded: its role and text."""

    role: str
    content: str


# --- prepare ------------------------------------------------------------------------------------

CandidatesTruncated = TypedDict("CandidatesTruncated", {
    "type": Literal["candidates_truncated"], "from": int, "to": int})
"""More candidates than ``max_candidates``: the first ``to`` of ``from`` are kept."""


class NoCandidates(TypedDict):
    """The mention has no candidate: the answer is NIL."""

    type: Literal["no_candidates"]


class CandidatesPruned(TypedDict):
    """``prune_k``: the ranker's top ``k`` candidates are kept; ``dropped`` names the others."""

    type: Literal["candidates_pruned"]
    k: int
    dropped: list[str]


class ContextTruncated(TypedDict):
    """The context was cut to ``max_context_chars``."""

    type: Literal["context_truncated"]
    from_chars: int
    to_chars: int


class ImageUnusable(TypedDict):
    """The image could not be used (``kind``: missing, corrupt, unsupported, ...)."""

    type: Literal["image_unusable"]
    kind: str
    reason: str


class IavModeChosen(TypedDict):
    """IAV's mode, when a better one was not possible, and why."""

    type: Literal["iav_mode"]
    mode: str | None
    reason: str


class ToolsError(TypedDict):
    """The visual tools could not be set up: none is available."""

    type: Literal["tools_error"]
    reason: str


# --- retrieve -----------------------------------------------------------------------------------

class KbCandidates(TypedDict):
    """The candidates a knowledge base generated, with the generator's scores."""

    type: Literal["kb_candidates"]
    kb: str
    k: int
    latency_ms: float
    generated: list[dict[str, Any]]
    ranked: list[str]


# --- TES and the hybrid's review ----------------------------------------------------------------

class TesAnswer(TypedDict):
    """One answer of TES: the ranker's (``strategy: retrieval``, with its scores), or the LLM's
    (one call: ``attempt``, ``raw`` reply, ``latency_s``, ``tokens``, ``prompt``), or the NIL
    rule's in place of an LLM call (``strategy: llm``, ``method: nil_rule``, ``nil_reason``), and
    the candidate it maps to (``mapped``, ``method``)."""

    type: Literal["tes_answer"]
    round: int
    offered: list[str]
    mapped: NotRequired[str | None]
    method: NotRequired[str | None]
    # the ranker's answer
    strategy: NotRequired[str]
    top: NotRequired[list[dict[str, Any]]]
    scores: NotRequired[list[dict[str, Any]]]  # every offered candidate's
    model: NotRequired[str]
    p_link: NotRequired[float]
    nil_threshold: NotRequired[float]
    nil_reason: NotRequired[str]
    # the LLM's answer (one call)
    attempt: NotRequired[int]
    raw: NotRequired[str]
    score: NotRequired[float]
    latency_s: NotRequired[float]
    tokens: NotRequired[int | None]
    prompt: NotRequired[list[Message]]
    answer_format: NotRequired[str]
    structured: NotRequired[str | None]
    structured_error: NotRequired[str]
    reply: NotRequired[str]


class TesHybrid(TypedDict):
    """Hybrid TES: the ranker's probability beside ``hybrid_threshold`` (node ``tes``), and which
    path decided the answer that stands (node ``review``: ``ranker``, ``llm`` or ``none``)."""

    type: Literal["tes_hybrid"]
    node: str
    threshold: float
    path: NotRequired[str]
    round: NotRequired[int]
    p: NotRequired[float]
    unsure: NotRequired[bool]
    reason: NotRequired[str]
    reviews: NotRequired[str]
    ranker_answer: NotRequired[str | None]
    top_k: NotRequired[list[str]]
    answer: NotRequired[str | None]


class LlmError(TypedDict):
    """An LLM call that failed (``latency_s``, ``attempt``, ``prompt``), or a chat model that
    could not be set up (no call): the answer comes from a fallback."""

    type: Literal["llm_error"]
    node: str
    error: str
    attempt: NotRequired[int]
    latency_s: NotRequired[float]
    prompt: NotRequired[list[Message]]


class UnmappableAnswer(TypedDict):
    """The LLM named no candidate; TES asks again or falls back."""

    type: Literal["unmappable_answer"]
    raw: str


class TesFallback(TypedDict):
    """TES's answer came from a fallback (``method``), not from the LLM."""

    type: Literal["tes_fallback"]
    choice: str | None
    method: str


# --- ICR and IAV --------------------------------------------------------------------------------

class IcrDecision(TypedDict):
    """ICR's score of the choice beside α, and what followed."""

    type: Literal["icr"]
    round: int
    choice: str | None
    score: float | None
    decision: NotRequired[str]  # pass | reject_and_rechoose | exhausted_keep_best | nil_not_checked
    threshold: NotRequired[float]
    kept: NotRequired[str]


class IavDecision(TypedDict):
    """IAV's score of the choice in its mode beside β, and the decision."""

    type: Literal["iav"]
    round: int
    choice: str | None
    mode: str | None
    score: NotRequired[float | None]
    threshold: NotRequired[float]
    decision: NotRequired[str]  # pass | fail | unavailable | nil_not_verifiable
    reason: NotRequired[str]


# --- VIF ----------------------------------------------------------------------------------------

class VifRequest(TypedDict):
    """The LLM's one call to pick a visual tool: the tools offered, those it asked for."""

    type: Literal["vif_request"]
    offered: list[str]
    requested: list[Any]
    raw: str
    latency_s: float
    tokens: int | None
    prompt: NotRequired[list[Message]]


class InvalidToolCall(TypedDict):
    """The LLM asked for a tool it was not offered: the next one in order runs."""

    type: Literal["invalid_tool_call"]
    requested: Any
    offered: list[str]


class ExtraToolCallsIgnored(TypedDict):
    """The LLM asked for more than one tool: only the first runs."""

    type: Literal["extra_tool_calls_ignored"]
    ignored: list[Any]


class VifNoToolLeft(TypedDict):
    """Every available tool has run."""

    type: Literal["vif_no_tool_left"]


class ToolCall(TypedDict):
    """One visual tool run: which, chosen how, and its result (cut; the clue keeps it whole)."""

    type: Literal["tool_call"]
    tool: str
    how: str
    backend: str
    ok: bool
    error: str | None
    result: str
    latency_s: float


Event: TypeAlias = (
    CandidatesTruncated | NoCandidates | CandidatesPruned | ContextTruncated | ImageUnusable
    | IavModeChosen | ToolsError | KbCandidates | TesAnswer | TesHybrid | LlmError
    | UnmappableAnswer | TesFallback | IcrDecision | IavDecision | VifRequest | InvalidToolCall
    | ExtraToolCallsIgnored | VifNoToolLeft | ToolCall)
"""Any event (the element type of the state's ``events``)."""

EVENT_TYPES: dict[str, type] = {
    "candidates_truncated": CandidatesTruncated, "no_candidates": NoCandidates,
    "candidates_pruned": CandidatesPruned, "context_truncated": ContextTruncated,
    "image_unusable": ImageUnusable, "iav_mode": IavModeChosen, "tools_error": ToolsError,
    "kb_candidates": KbCandidates, "tes_answer": TesAnswer, "tes_hybrid": TesHybrid,
    "llm_error": LlmError, "unmappable_answer": UnmappableAnswer, "tes_fallback": TesFallback,
    "icr": IcrDecision, "iav": IavDecision, "vif_request": VifRequest,
    "invalid_tool_call": InvalidToolCall, "extra_tool_calls_ignored": ExtraToolCallsIgnored,
    "vif_no_tool_left": VifNoToolLeft, "tool_call": ToolCall,
}
"""Every kind of event, by its ``type``."""

_KIND = {cls: name for name, cls in EVENT_TYPES.items()}

# the kinds that record an LLM call (with its latency_s); see is_llm_call
LLM_CALL_TYPES = frozenset({"tes_answer", "vif_request", "llm_error"})

E = TypeVar("E")


def is_llm_call(event: Mapping[str, Any]) -> bool:
    """Whether ``event`` records one LLM call: a ``tes_answer`` or ``vif_request`` the LLM gave,
    or an ``llm_error`` of a call that failed (each with the call's ``latency_s``; the ranker's
    ``tes_answer`` and a chat model that could not be set up have none)."""
    return event.get("type") in LLM_CALL_TYPES and "latency_s" in event


def last(events: Iterable[Mapping[str, Any]], kind: type[E]) -> E:
    """The last event of ``kind`` (a class of :data:`EVENT_TYPES`) in ``events``; an empty one
    (every ``.get`` gives None) when there is none. Events read back from a file are not checked:
    readers use ``.get``."""
    name = _KIND[kind]
    found: Mapping[str, Any] = {}
    for e in events:
        if isinstance(e, Mapping) and e.get("type") == name:
            found = e
    return cast(E, found)


def of_kind(events: Iterable[Mapping[str, Any]], kind: type[E]) -> list[E]:
    """Every event of ``kind`` in ``events``, in order."""
    name = _KIND[kind]
    return [cast(E, e) for e in events if isinstance(e, Mapping) and e.get("type") == name]


def tokens_of(msg: Any) -> int | None:
    """Total tokens of a chat-model reply, when the backend reports usage."""
    return (getattr(msg, "usage_metadata", None) or {}).get("total_tokens")


def prompt_text(messages: Sequence[Any]) -> list[Message]:
    """A prompt as it is recorded: each message's role and text."""
    return [{"role": getattr(m, "type", "?"), "content": str(getattr(m, "content", m))}
            for m in messages]
