"""A served request's mention, checked before any work: the fields ``i2cr link`` reads (through
:func:`i2cr.data.parse_record`), ``precomputed_clues`` read as ``clues`` (the graph's input
names), and the image held to the server's rules (an http(s) or data: URL, a local path only
under the image root, no private host). Used by ``/link`` and by the auth handler that checks a
LangGraph API run's input."""

from __future__ import annotations

from typing import Any

from i2cr.data import DataError, Mention, parse_record
from i2cr.images import ImageError, check_ref
from i2cr.serve.config import BadRequest, check_image_ref


def mention_from(raw: Any, rid: str, *, kb: bool, check_image: bool = True) -> Mention:
    """``raw`` as a :class:`Mention`, or :class:`DataError` naming the record and field."""
    if isinstance(raw, dict) and "precomputed_clues" in raw and "clues" not in raw:
        raw = {**raw, "clues": raw["precomputed_clues"]}
    if isinstance(raw, dict) and raw.get("id") is not None:
        rid = str(raw["id"])[:200]
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
