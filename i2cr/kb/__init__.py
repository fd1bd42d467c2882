"""Linking against a knowledge base: build an entity index (LanceDB) and generate candidates."""

from .index import KB, KBError, build, open_kb
from .source import Entity, read_source

__all__ = ["KB", "KBError", "Entity", "build", "open_kb", "read_source"]
