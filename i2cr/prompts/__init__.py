"""Prompt templates: TES (text-only, with visual clues, re-choice with exclusions) and VIF."""

from .tes import SYSTEM_PROMPT, build_tes_messages, short_desc
from .vif import VIF_SYSTEM_PROMPT, build_vif_messages

__all__ = ["SYSTEM_PROMPT", "build_tes_messages", "short_desc", "VIF_SYSTEM_PROMPT",
           "build_vif_messages"]
