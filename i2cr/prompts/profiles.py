"""The TES prompt profiles, chosen by the ``prompt_profile`` setting in one place.

A profile is everything that depends on the prompt's layout: the builder of a TES call's messages,
the note for a retry after an answer that named no candidate, how a reply answering a name is
written (the target of fine-tuning examples), and how the offered candidates are read back from a
built prompt (for scripted LLMs and tests). Mapping a reply onto a candidate stays
:func:`i2cr.matching.map_answer`, which knows both answer markers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import paper, tes


@dataclass(frozen=True)
class Profile:
    name: str
    build: Callable[..., list]  # keywords of i2cr.prompts.tes.build_tes_messages -> messages
    retry_note: str
    answer: Callable[[str], str]  # a candidate name (or 'nil') -> the reply answering it
    offered: Callable[[str, Sequence[str]], tuple[list[str], bool]]  # (user text, known names)


PROFILES: dict[str, Profile] = {
    "i2cr": Profile("i2cr", tes.build_tes_messages, tes.RETRY_NOTE, tes.answer, tes.offered),
    "paper": Profile("paper", paper.build_messages, paper.RETRY_NOTE, paper.answer, paper.offered),
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown prompt profile {name!r}; known: {', '.join(PROFILES)}") from None
