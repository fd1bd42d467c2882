"""Visual tools for VIF: the interface, the registry and the built-in backends."""

from .base import (
    ENTRY_POINT_GROUP,
    ToolInput,
    ToolResult,
    ToolUnavailable,
    VisualTool,
    load_entry_points,
    register_tool,
    registered_tools,
    unregister_tool,
)
from .builtin import PAPER_ORDER
from .factory import build_tools

__all__ = ["ENTRY_POINT_GROUP", "PAPER_ORDER", "ToolInput", "ToolResult", "ToolUnavailable",
           "VisualTool", "build_tools", "load_entry_points", "register_tool", "registered_tools",
           "unregister_tool"]
