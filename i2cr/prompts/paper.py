"""TES prompts in the layout the authors' released LoRA adapter (Llama3-8B-Instruct) was trained on.

As ``I2CR-METHOD.md`` ("The prompt layout the released LoRA adapter was trained on") describes it:

- system: one sentence stating the task; where NIL is allowed, a second one saying to answer nil;
- user: ``GIVEN:`` on its own line, then the sample as a Python dict literal (``repr``) with the
  keys ``'mention'``, ``'mention context text'``, ``'mention image information'`` (only in rounds
  with a visual clue: the clue's text, or a dict of clue type to text when a round carries several)
  and ``'candidate entities'`` (``'1. <name>'`` -> the shortened description), then the instruction
  to choose one candidate without explanation and to answer ``<|ANSWER|>: <name>`` (``<|ANSWER|>:
  nil`` where NIL is allowed).

The sentences are our own wording of that description. A re-choice after ICR rejected candidates is
the same prompt with the rejected ones left out of the dict (the rest renumbered, so that a number
in the answer names an offered candidate) and a note naming them. A retry after an answer that
named no candidate adds a note asking for the marker. Answers (``<|ANSWER|>: 3. Ed Rendell``) are
read by :func:`i2cr.matching.map_answer`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage

from .tes import clue_text, short_desc

ANSWER_MARKER = "<|ANSWER|>:"

SYSTEM = ("Your task is to match the given mention with the candidate entities and to select the "
          "candidate entity that best matches the mention.")
SYSTEM_NIL = " If no candidate entity matches the mention, answer nil."

INSTRUCTION = ("Choose exactly one of the candidate entities, with no explanation.\n"
               f"Give the final answer in this format: {ANSWER_MARKER} <the entity name you selected>")
INSTRUCTION_NIL = ("\nIf no candidate entity matches the mention, give the final answer: "
                   f"{ANSWER_MARKER} nil")
EXCLUDED_NOTE = ("\nNote: these candidates were rejected (their descriptions do not match the mention "
                 "context) and are left out: {names}.")
RETRY_NOTE = ("Your previous reply named no candidate entity. Give the final answer in this format: "
              f"{ANSWER_MARKER} <the entity name you selected>")

# the dataset's names of the clue types (mention_imgdesc_Azure), for a round with several clues
CLUE_TYPES = {"ocr": "OCR text", "caption": "Caption", "dense_captions": "Dense Captions",
              "tags": "Tags"}

_NUMBERED = re.compile(r"^\d+\. ")


def image_information(clues: Sequence[Mapping[str, Any]]) -> str | dict[str, str] | None:
    """The value of ``'mention image information'``: one clue's text, a dict of clue type to text
    for several, None for none (the key is then left out)."""
    texts = [(str(c.get("tool", "clue")), clue_text(c)) for c in clues]
    texts = [(t, x) for t, x in texts if x]
    if not texts:
        return None
    if len(texts) == 1:
        return texts[0][1]
    return {CLUE_TYPES.get(t, t): x for t, x in texts}


def build_messages(*, mention: str, context: str, candidates: Sequence[Mapping[str, Any]],
                   excluded: Sequence[str] = (), clues: Sequence[Mapping[str, Any]] = (),
                   allow_nil: bool = False, desc_chars: int = 120, retry_note: str = "") -> list:
    """System and user message of one TES call (the keywords of
    :func:`i2cr.prompts.tes.build_tes_messages`); ``candidates`` are the offered ones."""
    sample: dict[str, Any] = {"mention": mention, "mention context text": context}
    info = image_information(clues)
    if info is not None:
        sample["mention image information"] = info
    sample["candidate entities"] = {f"{i}. {c['name']}": short_desc(c.get("desc", ""), desc_chars)
                                    for i, c in enumerate(candidates, 1)}
    system = SYSTEM + (SYSTEM_NIL if allow_nil else "")
    user = f"GIVEN:\n{sample!r}\n\n{INSTRUCTION}" + (INSTRUCTION_NIL if allow_nil else "")
    if excluded:
        user += EXCLUDED_NOTE.format(names="; ".join(excluded))
    if retry_note:
        user += "\n" + retry_note
    return [SystemMessage(system), HumanMessage(user)]


def answer(name: str) -> str:
    """The reply that answers ``name`` (a candidate or 'nil') in this layout."""
    return f"{ANSWER_MARKER} {name}"


def offered(user: str, known: Sequence[str] = ()) -> tuple[list[str], bool]:
    """(candidate names in prompt order, whether NIL may be answered), read back from a user
    message this module built (``known`` is not needed: the dict literal is exact)."""
    _, sep, rest = user.partition("GIVEN:\n")
    if not sep:
        return [], False
    try:
        sample = ast.literal_eval(rest.split("\n", 1)[0])
        keys = list(sample["candidate entities"])
    except (ValueError, SyntaxError, KeyError, TypeError):
        return [], False
    return [_NUMBERED.sub("", k, count=1) for k in keys], INSTRUCTION_NIL in user
