"""A served request's mention, checked before any work: the fields ``i2cr link`` reads (through
:func:`i2cr.data.parse_record`), ``precomputed_clues`` read as ``clues`` (the graph's input
names), and the image held to the server's rules (an http(s) or data: URL, a local path only
under the image root, no private host). Used by ``/link`` and by the auth handler that checks a
LangGraph API run's input."""

from __future__ import annotations

from typing import Any

from i2cr.data import DataError, Mention, parse_record
from i2cr.graph.state import CandidateDict, InputState
from i2cr.images import ImageError, check_ref
from i2cr.serve.config import BadRequest, check_image_ref

GRAPH_INPUT = frozenset(InputState.__annotations__)
CANDIDATE_KEYS = frozenset(CandidateDict.__annotations__)


def check_graph_input(raw: Any, rid: str) -> None:
    """:class:`DataError` for a LangGraph API run input the graph would not read as ``/link``
    reads a mention: a field the graph's input has not (``/link``'s aliases such as
    ``Candentity``, which the graph drops), or a candidate that is not an object of the graph's
    candidate fields (a plain name, which ``/link`` takes, would crash the run)."""
    if not isinstance(raw, dict):
        return  # parse_record names it
    for k in raw:
        if k not in GRAPH_INPUT:
            raise DataError(f"is not a field of the graph's input (fields: "
                            f"{', '.join(sorted(GRAPH_INPUT))})", source="request", record=rid,
                            field=str(k)[:60])
    cands = raw.get("candidates")
    for i, c in enumerate(cands if isinstance(cands, list) else []):
        odd = sorted(map(str, set(c) - CANDIDATE_KEYS)) if isinstance(c, dict) else []
        if not isinstance(c, dict) or odd:
            raise DataError(f"a candidate of a run's input is an object with "
                            f"{', '.join(sorted(CANDIDATE_KEYS))} ('name' required), not "
                            f"{odd[0][:40] if odd else type(c).__name__}", source="request",
                            record=rid, field=f"candidates[{i}]")


def record_id(raw: Any, rid: str) -> str:
    """The id of a request's record: its own ``id`` (cut to 200 characters), else ``rid``."""
    return str(raw["id"])[:200] if isinstance(raw, dict) and raw.get("id") is not None else rid


def mention_from(raw: Any, rid: str, *, kb: bool, check_image: bool = True) -> Mention:
    """``raw`` as a :class:`Mention`, or :class:`DataError` naming the record and field."""
    if isinstance(raw, dict) and "precomputed_clues" in raw and "clues" not in raw:
        raw = {**raw, "clues": raw["precomputed_clues"]}
    rid = record_id(raw, rid)
    m = parse_record(raw, rid, source="request", candidates="optional" if kb else "required")
    if check_image and m.image:
        try:
            check_image_ref(m.image, "image")
            check_ref(m.image)  # the process's image policy (the server's, once it started)
        except BadRequest as e:
            raise DataError(str(e).removeprefix("image: "), source="request", record=rid,
                            field="image") from None
        except ImageError as e:
            if e.kind == "refused":  # unreachable and the like: the run records it
                raise DataError(e.reason, source="request", record=rid, field="image") from None
    return m
