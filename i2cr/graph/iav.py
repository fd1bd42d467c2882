"""IAV, inter-modal alignment verification: does the image agree with the chosen entity?

Two modes, chosen once per mention by the ``prepare`` node and reported as such:

- ``clip``: open_clip between the mention image and the entity description (parenthesised text
  removed), in logit units (100 x cosine), against ``iav_threshold`` (the paper's beta = 31);
- ``caption``: no image or no CLIP weights, but the sample has the image's caption and tags; the
  text embedder compares them with the entity text, in the same units, against
  ``caption_threshold``. This is a bridge, never reported as CLIP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langgraph.runtime import Runtime

from ..data import NIL
from ..embeddings import ModelUnavailable
from ..images import ImageError
from . import resources
from .context import Context, settings_of
from .events import IavDecision
from .state import State
from .texts import chosen_text


def caption_text(state: Mapping[str, Any]) -> str:
    """The sample's precomputed caption and tags, the caption bridge's text for the image."""
    clues = state.get("precomputed_clues") or {}
    parts = [str(clues.get("Caption") or "").strip(), str(clues.get("Tags") or "").strip()]
    return ". ".join(p for p in parts if p)


def threshold_for(ctx: Context, mode: str | None) -> float:
    """IAV's threshold in a mode: ``iav_threshold`` for CLIP, ``caption_threshold`` for the
    caption bridge (the one rule; VIF's prompt shows the same)."""
    return ctx.iav_threshold if mode == "clip" else ctx.caption_threshold


def iav_score(state: State, ctx: Context, name: str) -> tuple[float, float]:
    """(score, threshold) of the current mode for one candidate."""
    text = chosen_text(state, name)
    if state["iav_mode"] == "clip":
        ref = state.get("image")
        if ref is None:  # prepare chooses CLIP only for an image that loaded
            raise ImageError("missing", "no image to compare with")
        img = ctx.resources.images.load(ref)
        score = resources.clip(ctx).score(img.image, [text], image_key=img.sha256)[0]
        return score, threshold_for(ctx, "clip")
    sim = resources.embedder(ctx).similarity(caption_text(state), [text])[0]
    return 100.0 * sim, threshold_for(ctx, state["iav_mode"])


def iav(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    """The IAV node: score this round's answer against the image (or its caption).

    Reads ``choice``, ``round``, ``iav_mode``, ``candidates``, ``image``, ``precomputed_clues``,
    ``rounds``; writes ``path``, ``iav_score``, ``iav_passed``, ``events`` and either the
    verdict into the round's entry of ``rounds`` or, when nothing can be scored after all,
    ``visual_available`` (False)."""
    ctx = settings_of(runtime)
    choice = state["choice"]
    rnd = state["round"]
    mode = state["iav_mode"]
    ev: IavDecision = {"type": "iav", "round": rnd, "choice": choice, "mode": mode}
    if choice is None or choice == NIL:
        ev.update({"score": None, "decision": "nil_not_verifiable"})
        return {"path": ["iav"], "iav_score": None, "iav_passed": False, "events": [ev]}
    try:
        score, threshold = iav_score(state, ctx, choice)
    except (ImageError, ModelUnavailable) as e:
        ev.update({"score": None, "decision": "unavailable", "reason": str(e)})
        return {"path": ["iav"], "iav_score": None, "iav_passed": False, "events": [ev],
                "visual_available": False}
    passed = score >= threshold
    ev.update({"score": round(score, 3), "threshold": threshold,
               "decision": "pass" if passed else "fail"})
    answers = [dict(a) for a in state["rounds"]]
    if answers:
        answers[-1].update(iav=score, iav_passed=passed)
    return {"path": ["iav"], "iav_score": score, "iav_passed": passed, "events": [ev],
            "rounds": answers}
