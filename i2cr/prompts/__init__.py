"""Prompt templates: TES (text-only, with visual clues, re-choice with exclusions) in two profiles
(the project's own and the paper adapter's), and VIF."""

from .profiles import PROFILES, Profile, profile
from .tes import SYSTEM_PROMPT, build_tes_messages, short_desc
from .vif import VIF_SYSTEM_PROMPT, build_vif_messages

__all__ = ["PROFILES", "Profile", "profile", "SYSTEM_PROMPT", "build_tes_messages", "short_desc",
           "VIF_SYSTEM_PROMPT", "build_vif_messages"]
