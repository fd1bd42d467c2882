"""Read the records of a dataset one by one, never the whole file at once.

JSONL is read line by line by :func:`i2cr.data.iter_records` already. The I2CR/MELBench JSON
(a dict ``id -> sample``, or a list of samples) is read here in chunks: each member is decoded
with ``json.JSONDecoder.raw_decode`` as soon as its text is in the buffer, and the buffer keeps only
what has not been decoded yet, so memory is bounded by the largest record, not by the file.

The records are the same ``(id, raw record)`` pairs :func:`i2cr.data.iter_records` yields; a record
nested too deeply to decode becomes ``(id, DataError)`` and the others are kept. A document that
is not JSON fails with a :class:`DataError` naming the file and the character where it broke (the
records before it have been yielded by then). A file that is one sample on its own, not a dict of
samples, is read whole (it is one record).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..data import DataError, MadeUpId, iter_records, open_error, own_ids_first

CHUNK = 1 << 20  # characters read at a time
_WS = re.compile(r"\s*")
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]')  # a string, maybe cut
_DECODER = json.JSONDecoder()


class _Buffer:
    """A text buffer over a file that grows on demand and forgets what was consumed."""

    def __init__(self, fh: IO[str], source: str):
        self.fh, self.source = fh, source
        self.text, self.pos, self.offset, self.eof = "", 0, 0, False

    def more(self, want: int = CHUNK) -> bool:
        """Read more text; False at the end of the file."""
        if self.eof:
            return False
        try:
            got = self.fh.read(max(want, CHUNK))
        except UnicodeDecodeError as e:
            raise DataError(f"is not UTF-8 text ({e.reason})", source=self.source) from None
        if not got:
            self.eof = True
            return False
        self.offset += self.pos
        self.text, self.pos = self.text[self.pos:] + got, 0
        return True

    def skip_ws(self) -> str:
        """The next non-space character ('' at the end of the file), not consumed."""
        while True:
            m = _WS.match(self.text, self.pos)
            assert m is not None
            self.pos = m.end()
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def fail(self, what: str) -> DataError:
        return DataError(f"malformed JSON at character {self.offset + self.pos + 1}: {what}",
                         source=self.source)

    def value(self) -> Any:
        """Decode the JSON value that starts here (reading until it is whole)."""
        want = CHUNK
        while True:
            try:
                v, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                # cut by the buffer's end (a string, literal or escape not yet whole): read on;
                # an error well inside the buffer is the document's own
                cut = e.msg.startswith("Unterminated string") or e.pos >= len(self.text) - 10
                if cut and self.more(want):
                    want *= 2  # a long value is re-decoded a logarithmic number of times
                    continue
                raise self.fail(e.msg) from None
            if end == len(self.text) and isinstance(v, (int, float)) and self.more():
                continue  # a number at the buffer's end may go on in the next chunk
            self.pos = end
            return v

    def skip_value(self) -> None:
        """Step over the value that starts here by counting brackets outside strings (for a
        record nested too deeply to decode); rescanned whole after each read, so that a string
        cut by the buffer's end is never taken for brackets."""
        want = CHUNK
        while True:
            depth = 0
            for m in _TOKEN.finditer(self.text, self.pos):
                tok = m.group()
                if tok[0] == '"' and (len(tok) < 2 or tok[-1] != '"' or m.end() == len(self.text)):
                    break  # a string not yet whole: read on
                if tok in "[{":
                    depth += 1
                elif tok in "]}":
                    depth -= 1
                    if depth == 0:
                        self.pos = m.end()
                        return
            if not self.more(want):
                raise self.fail("the last record never ends")
            want *= 2


def iter_stream(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(id, raw record)`` pairs of a dataset file, read incrementally (see the module doc)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        yield from iter_records(path)
        return
    yield from own_ids_first(_stream(path), lambda: _stream(path))  # (a record without an id)


def _stream(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        fh = path.open("r", encoding="utf-8")
    except OSError as e:
        raise open_error(path, e) from None
    with fh:
        buf = _Buffer(fh, str(path))
        first = buf.skip_ws()
        if first == "{":
            buf.pos += 1
            yield from _members(buf, path, is_dict=True)
        elif first == "[":
            buf.pos += 1
            yield from _members(buf, path, is_dict=False)
        else:
            raise DataError("expected an object of id -> sample, a list of samples or one sample",
                            source=str(path))


def _members(buf: _Buffer, path: Path, *, is_dict: bool) -> Iterator[tuple[str, Any]]:
    close = "}" if is_dict else "]"
    index = 0
    while True:
        c = buf.skip_ws()
        if c == close and index == 0:
            buf.pos += 1
            break
        key: str = MadeUpId(index)  # a list's record without an id (iter_records's rule)
        if is_dict:
            k = buf.value() if c == '"' else None
            if not isinstance(k, str):
                raise buf.fail("expected a record id in double quotes")
            if buf.skip_ws() != ":":
                raise buf.fail("expected ':' after a record id")
            buf.pos += 1
            key = k
            buf.skip_ws()
        try:
            rec = buf.value()
        except RecursionError:
            buf.skip_value()
            rec = DataError("JSON nested too deeply to read", source=str(path), record=key)
        if is_dict and index == 0 and (key == "mention" or not isinstance(rec, (dict, DataError))):
            yield from _single(buf, path, key, rec)  # one sample on its own, not a dict of them
            return
        if not is_dict and isinstance(rec, dict) and "id" in rec:
            key = str(rec["id"])
        yield key, rec
        index += 1
        c = buf.skip_ws()
        buf.pos += 1
        if c == close:
            break
        if c != ",":
            raise buf.fail(f"expected ',' or '{close}' after record {key!r}")
    if buf.skip_ws():
        raise buf.fail("text after the end of the document")


def _single(buf: _Buffer, path: Path, key: str, value: Any) -> Iterator[tuple[str, Any]]:
    """The rest of a document that is one sample (small): read whole, then judged the way
    :func:`i2cr.data.iter_records` judges it."""
    rec = {key: value}
    while True:
        c = buf.skip_ws()
        buf.pos += 1
        if c == "}":
            break
        if c != ",":
            raise buf.fail("expected ',' or '}'")
        buf.skip_ws()
        k = buf.value()
        if not isinstance(k, str) or buf.skip_ws() != ":":
            raise buf.fail("expected a field name and ':'")
        buf.pos += 1
        buf.skip_ws()
        rec[k] = buf.value()
    if buf.skip_ws():
        raise buf.fail("text after the end of the document")
    if "mention" in rec and not isinstance(rec["mention"], dict):
        yield str(rec.get("id", path.stem)), rec
    else:
        yield from ((str(k), v) for k, v in rec.items())
