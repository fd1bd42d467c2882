"""``i2cr kb build`` in bounded memory (issue 14): the ingestion never reads the table back per
batch (the ids already written are in an on-disk registry that always agrees with the table),
batches go in as Arrow tables with their alias columns, the name caches are not filled, the
indexes are built under LanceDB's memory settings and old table versions are deleted, and a
dataset source deduplicates on disk.

Vectors come from a hash of the text (the build's mechanics, not the embedder, are tested here),
so these KBs take a second each."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import write_jsonl

pytest.importorskip("lancedb")

import pyarrow as pa  # noqa: E402
from lancedb.table import LanceTable  # noqa: E402

import i2cr.kb.ids as kb_ids  # noqa: E402
import i2cr.kb.index as kb_index  # noqa: E402
from i2cr.kb import KB, build  # noqa: E402
from i2cr.kb.source import parse_entity, read_dataset  # noqa: E402

DIM = 16
EMB = "hash-16"


def encoder(calls: list | None = None):
    def encode(texts):
        if calls is not None:
            calls.extend(texts)
        v = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:DIM], dtype=np.uint8)
                      .astype(np.float32) - 127.5 for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)
    return encode


def entities(ids, alias_every: int = 3) -> list[dict]:
    return [{"id": f"E{i}", "name": f"Entity number {i}", "desc": f"Thing {i} of the test.",
             "aliases": ([{"name": f"Alias {i}", "prior": 0.5}, "Plain"] if i % alias_every == 0
                         else [])} for i in ids]


def table_ids(kb_dir) -> list[str]:
    db = kb_index._lancedb().connect(str(Path(kb_dir) / kb_index.DB))
    return db.open_table(kb_index.TABLE).to_arrow().column("id").to_pylist()


def registry_rows(kb_dir) -> tuple[set[str], int | None]:
    con = sqlite3.connect(Path(kb_dir) / kb_ids.FILE)
    try:
        ids = {r[0] for r in con.execute("SELECT id FROM ids")}
        v = con.execute("SELECT v FROM stamp WHERE k = 'version'").fetchone()
    finally:
        con.close()
    return ids, (None if v is None else v[0])


@pytest.fixture
def table_calls(monkeypatch):
    """Every read, write and optimize of a LanceDB table, in order: (method, argument)."""
    calls: list[tuple[str, object]] = []

    def spy(name):
        orig = getattr(LanceTable, name)

        def f(self, *a, **k):
            calls.append((name, k["config"] if "config" in k else a[0] if a else None))
            return orig(self, *a, **k)
        monkeypatch.setattr(LanceTable, name, f)

    for name in ("search", "to_arrow", "to_pandas", "add", "optimize", "create_index"):
        spy(name)
    return calls


def ingestion(calls):
    """The calls before the first optimize (the ingestion's)."""
    first = next(i for i, (n, _) in enumerate(calls) if n == "optimize")
    return calls[:first]


def test_ingestion_never_reads_the_table_and_writes_arrow_batches(tmp_path, table_calls):
    src = write_jsonl(tmp_path / "e.jsonl", entities(range(20)))
    meta = build(src, tmp_path / "kb", embedder=EMB, encode=encoder(), batch_size=4,
                 progress=False)
    assert meta["complete"] and meta["entities"] == 20
    ing = ingestion(table_calls)
    # five batches written; none looked up in the table (main scanned its ids once a batch)
    assert [n for n, _ in ing] == ["add"] * 5, ing
    assert all(isinstance(arg, pa.Table) and arg.num_rows == 4 for _, arg in ing)
    # the alias columns go through the Arrow batches
    first = ing[0][1]
    assert isinstance(first, pa.Table)
    assert first.column("alias_keys").to_pylist()[:2] == [["alias 0"], []]
    assert first.column("alias_priors").to_pylist()[:2] == [[0.5], []]
    # an interrupted build resumed: its registry agrees with the table, so nothing is read back
    table_calls.clear()
    src2 = write_jsonl(tmp_path / "e2.jsonl", entities(range(12)))
    build(src2, tmp_path / "kb2", embedder=EMB, encode=encoder(), batch_size=4, progress=False,
          stop_after=1)
    table_calls.clear()
    calls: list[str] = []
    meta = build(src2, tmp_path / "kb2", embedder=EMB, encode=encoder(calls), batch_size=4,
                 progress=False)
    assert [n for n, _ in ingestion(table_calls)] == ["add", "add"]
    assert meta["skipped_now"] == 4 and len(calls) == 8
    assert sorted(table_ids(tmp_path / "kb2")) == sorted(f"E{i}" for i in range(12))


def test_repeated_ids_are_skipped_through_the_registry_across_and_within_batches(tmp_path):
    rows = [*entities(range(6)), *entities([2, 2, 6, 0]), *entities([7, 6, 8, 1])]
    src = write_jsonl(tmp_path / "e.jsonl", rows)
    calls: list[str] = []
    # the source's repeated ids never reach a batch (the source names them): 9 entities, so two
    # batches of 4 are written before the stop
    meta = build(src, tmp_path / "kb", embedder=EMB, encode=encoder(calls), batch_size=4,
                 progress=False, stop_after=2)
    # mid-build, the registry holds exactly the table's ids, stamped with the table's version
    ids, version = registry_rows(tmp_path / "kb")
    have = table_ids(tmp_path / "kb")
    assert sorted(have) == sorted(ids) == sorted(f"E{i}" for i in range(8))
    db = kb_index._lancedb().connect(str(tmp_path / "kb" / kb_index.DB))
    assert version == db.open_table(kb_index.TABLE).version
    meta = build(src, tmp_path / "kb", embedder=EMB, encode=encoder(calls), batch_size=4,
                 progress=False)
    got = table_ids(tmp_path / "kb")
    assert sorted(got) == sorted(f"E{i}" for i in range(9)) and len(got) == len(set(got))
    assert len(calls) == 9  # each entity embedded once
    assert meta["repeated"] == 5 and meta["skipped_now"] == 8  # the resumed build's, by registry
    assert meta["complete"] and not (tmp_path / "kb" / kb_ids.FILE).exists()


def test_a_build_stopped_between_the_table_write_and_the_registry_loses_and_repeats_nothing(
        tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "e.jsonl", entities(range(14)))
    orig = kb_ids.IdRegistry.record
    n = {"calls": 0}

    def record(self, ids, version):
        n["calls"] += 1
        if n["calls"] == 2:  # the second batch is in the table; the process dies here
            raise KeyboardInterrupt
        return orig(self, ids, version)

    monkeypatch.setattr(kb_ids.IdRegistry, "record", record)
    with pytest.raises(KeyboardInterrupt):
        build(src, tmp_path / "kb", embedder=EMB, encode=encoder(), batch_size=4, progress=False)
    monkeypatch.setattr(kb_ids.IdRegistry, "record", orig)
    assert len(table_ids(tmp_path / "kb")) == 8 and len(registry_rows(tmp_path / "kb")[0]) == 4
    calls: list[str] = []
    meta = build(src, tmp_path / "kb", embedder=EMB, encode=encoder(calls), batch_size=4,
                 progress=False)
    got = table_ids(tmp_path / "kb")
    assert sorted(got) == sorted(f"E{i}" for i in range(14)) and len(got) == 14
    # the table is the truth: its second batch is not embedded nor written again
    assert meta["skipped_now"] == 8 and len(calls) == 6


@pytest.mark.parametrize("damage", ["ahead", "same-count", "garbage", "missing"])
def test_a_registry_that_disagrees_with_the_table_is_rebuilt_from_it(tmp_path, damage):
    src = write_jsonl(tmp_path / "e.jsonl", entities(range(12)))
    kb = tmp_path / "kb"
    build(src, kb, embedder=EMB, encode=encoder(), batch_size=4, progress=False, stop_after=1)
    reg = kb / kb_ids.FILE
    if damage in ("ahead", "same-count"):
        con = sqlite3.connect(reg)
        if damage == "ahead":  # ids registered whose rows never reached the table
            con.executemany("INSERT INTO ids VALUES (?)", [("E4",), ("E5",)])
        else:  # as many ids as the table, not the same, stamped with another version
            con.execute("DELETE FROM ids WHERE id = 'E3'")
            con.execute("INSERT INTO ids VALUES ('E6')")
            con.execute("UPDATE stamp SET v = v - 1")
        con.commit()
        con.close()
    elif damage == "garbage":
        for suffix in ("-wal", "-shm"):
            Path(str(reg) + suffix).unlink(missing_ok=True)
        reg.write_bytes(b"this is not an SQLite file" * 100)
    else:
        reg.unlink()
    calls: list[str] = []
    meta = build(src, kb, embedder=EMB, encode=encoder(calls), batch_size=4, progress=False)
    got = table_ids(kb)
    assert sorted(got) == sorted(f"E{i}" for i in range(12)) and len(got) == 12, damage
    assert meta["skipped_now"] == 4 and len(calls) == 8


def test_arrow_batch_keeps_every_column_of_the_schema():
    ents = [parse_entity(r) for r in [
        {"id": "Q1", "name": "United Nations", "aliases": ["UNO", {"name": "U.N.", "prior": 0.9}],
         "desc": "Organisation.", "prior": 0.4, "image": "un.png"},
        {"id": "x", "name": "St._Louis,_Missouri"}]]
    vecs = encoder()(["a", "b"])
    t = kb_index.arrow_batch(ents, vecs, kb_index._schema(DIM))
    assert t.schema == kb_index._schema(DIM)
    rows = t.to_pylist()
    assert rows[0]["alias_keys"] == ["u n"] and rows[0]["alias_priors"] == [0.9]
    assert rows[0]["aliases"] == ["UNO", "U.N."] and rows[0]["qid"] == "Q1"
    assert rows[0]["prior"] == 0.4 and rows[0]["image"] == "un.png"
    assert rows[1]["alias_keys"] == [] and rows[1]["prior"] is None
    assert rows[1]["lex"] == kb_index.lex_text(ents[1]) == "st louis missouri | st louis"
    assert np.allclose(np.array(rows[1]["vector"], dtype=np.float32), vecs[1])


def test_the_build_does_not_fill_the_name_caches(tmp_path):
    from i2cr.names import fold, title_parts

    src = write_jsonl(tmp_path / "e.jsonl", entities(range(1000, 1040), alias_every=10 ** 9))
    before = (fold.cache_info(), title_parts.cache_info())
    build(src, tmp_path / "kb", embedder=EMB, encode=encoder(), batch_size=16, progress=False)
    after = (fold.cache_info(), title_parts.cache_info())
    assert [(c.hits + c.misses) for c in after] == [(c.hits + c.misses) for c in before]


def test_indexes_are_built_under_memory_settings_and_nothing_is_kept_twice_on_disk(
        tmp_path, table_calls):
    src = write_jsonl(tmp_path / "e.jsonl", entities(range(300)))  # PQ trains on 256 rows at least
    meta = build(src, tmp_path / "kb", embedder=EMB, encode=encoder(), batch_size=64,
                 progress=False, ann_min_rows=10)
    assert meta["ann"] and meta["entities"] == 300
    configs = {type(arg).__name__: arg for n, arg in table_calls if n == "create_index"}
    assert configs["FTS"].memory_limit == kb_index.FTS_MEMORY_MB
    ann = configs["IvfPq"]  # (lancedb.index.IvfPq)
    assert ann.num_partitions == 17 and ann.distance_type == "cosine"
    assert ann.num_sub_vectors == DIM // 8  # a byte per 8 dimensions
    kb = KB(tmp_path / "kb")
    assert {i["name"] for i in kb.table.list_indices()} >= {"lex_idx", "vector_idx"}
    assert on_disk_only_the_latest(kb.table, tmp_path / "kb") == (1, 3)
    # adding to a finished KB replaces its indexes, and the replaced ones go too (and
    # compaction did not have to update them first: they were dropped)
    table_calls.clear()
    more = write_jsonl(tmp_path / "more.jsonl", entities(range(300, 310)))
    build(more, tmp_path / "kb", embedder=EMB, encode=encoder(), batch_size=8, progress=False,
          ann_min_rows=10)
    kb = KB(tmp_path / "kb")
    assert kb.table.count_rows() == 310
    assert on_disk_only_the_latest(kb.table, tmp_path / "kb") == (1, 3)
    vec = encoder()(["Entity number 305. Thing 305 of the test."])[0]
    assert kb.dense(vec, 1)[0]["id"] == "E305"
    assert kb.lexical("entity number 305")[0]["id"] == "E305"


def on_disk_only_the_latest(table, kb_dir) -> tuple[int, int]:
    """(data files, index folders) on disk, after checking that they are those of the table's
    latest version: its fragments and its indexes, nothing of a version before."""
    lance = Path(kb_dir) / kb_index.DB / f"{kb_index.TABLE}.lance"
    data = list((lance / "data").iterdir())
    assert len(data) == table.stats()["fragment_stats"]["num_fragments"]
    indexes = {p.name for p in (lance / "_indices").iterdir()}
    assert indexes == {ix.index_uuid for ix in table.list_indices()}
    return len(data), len(indexes)


def test_the_ann_training_sample_does_not_grow_with_the_kb():
    cap = kb_index.ANN_TRAIN_MB * 2 ** 20
    for dim, sizes in ((384, (200_000, 1_000_000, 4_000_000)), (768, (200_000, 1_000_000))):
        for rows in sizes:
            c = kb_index.ann_config(rows, dim)
            sample = c.sample_rate * c.num_partitions
            assert c.num_partitions == int(rows ** 0.5)
            # LanceDB's default, 256 vectors per partition, is 384 MB at 1M 384-d vectors
            assert 0.8 * cap < sample * dim * 4 <= cap, (rows, dim)
    small = kb_index.ann_config(50_000, 384)
    assert small.sample_rate == 256  # a small KB keeps LanceDB's default sample


def _dataset(path: Path, mentions: int) -> Path:
    """A JSONL dataset of ``mentions`` records, each with five candidates seen nowhere else
    (QIDs, priors) and one shared by all; ten mention surfaces in all."""
    with path.open("w") as fh:
        for m in range(mentions):
            cands = [{"qid": f"Q{5 * m + j + 10}", "name": f"Candidate {5 * m + j}",
                      "prior": 0.1 * (j + 1)} for j in range(5)]
            cands.append({"qid": "Q1", "name": "Shared", "prior": 0.5})
            fh.write(json.dumps({"id": str(m), "mention": f"Surface {m % 10}",
                                 "context": "", "candidates": cands}) + "\n")
    return path


def _peak_while_reading(path: Path) -> tuple[int, int]:
    tracemalloc.start()
    try:
        n = sum(1 for e in read_dataset(path) if hasattr(e, "name"))
        return n, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_dataset_source_deduplicates_on_disk(tmp_path, monkeypatch):
    small = _dataset(tmp_path / "small.jsonl", 400)
    big = _dataset(tmp_path / "big.jsonl", 2000)
    _peak_while_reading(small)  # warm the name caches (ten surfaces) and the modules
    n_small, peak_small = _peak_while_reading(small)
    n_big, peak_big = _peak_while_reading(big)
    assert (n_small, n_big) == (2001, 10001)
    # 8,000 more entities, each with an alias: in sets and dicts that is > 2 MB of Python objects
    assert (peak_big - peak_small) / (n_big - n_small) < 40, (peak_small, peak_big)
    # the keys and the alias table live in a scratch folder while the stream is read, and go
    # when it ends or is closed
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    stream = read_dataset(small)
    first = next(stream)
    assert getattr(first, "id", None) == "Q10"
    assert [p.name for p in scratch.iterdir()][0].startswith("i2cr-kb-source-")
    stream.close()
    assert list(scratch.iterdir()) == []
    got = list(read_dataset(small))
    assert len(got) == 2001 and list(scratch.iterdir()) == []
    shared = next(e for e in got if getattr(e, "id", None) == "Q1")
    assert dict(shared.alias_priors) == {f"surface {k}": 0.5 for k in range(10)}


# --- hostile use of `i2cr kb build` (a fresh clone's review) -----------------------------------

def test_a_second_build_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    """Two builds into one folder gave a traceback (each wrote the table and removed the other's
    registry): the build holds an exclusive lock, and a second one is refused in one line (exit
    2 from the CLI), leaving the folder as it was."""
    import fcntl
    import os
    import subprocess
    import sys

    from conftest import ROOT

    src = write_jsonl(tmp_path / "e.jsonl", entities(range(8)))
    out = tmp_path / "kb"
    out.mkdir()
    with open(out / kb_index.LOCK, "a+b") as held:  # the build that runs
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(kb_index.KBError, match=f"KB {out} is being built by another process"):
            build(src, out, embedder=EMB, encode=encoder(), progress=False)
        p = subprocess.run([sys.executable, "-m", "i2cr.cli", "kb", "build", str(src), "--out",
                            str(out), "--no-progress"], capture_output=True, text=True,
                           timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                 HF_HUB_OFFLINE="1"))
        assert p.returncode == 2, p.stderr[-2000:]
        assert "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines()[-1] == \
            f"i2cr: KB {out} is being built by another process"
        assert sorted(x.name for x in out.iterdir()) == [kb_index.LOCK]  # nothing written
    meta = build(src, out, embedder=EMB, encode=encoder(), progress=False)  # lock released
    assert meta["complete"] and meta["entities"] == 8


def test_repeated_ids_in_a_source_are_named_with_their_lines(tmp_path):
    """Repeated ids were counted among the 'already there' ones, never named: the first few are
    named with both lines, the others counted in one more line."""
    rows = [*entities(range(3)), *entities([1]), *entities([3]), *entities([0, 2, 1, 1])]
    src = write_jsonl(tmp_path / "e.jsonl", rows)
    said: list[str] = []
    meta = build(src, tmp_path / "kb", embedder=EMB, encode=encoder(), progress=False,
                 warn=said.append)
    assert meta["entities"] == 4 and meta["repeated"] == 5 and meta["bad"] == 0
    assert said[:3] == [f"{src} line 4: repeats line 2's id 'E1' (that line is kept); skipped",
                        f"{src} line 6: repeats line 1's id 'E0' (that line is kept); skipped",
                        f"{src} line 7: repeats line 3's id 'E2' (that line is kept); skipped"]
    assert said[3:] == [f"{src}: 5 line(s) repeat an earlier line's id (3 named above); skipped "
                        "(the first of each is kept)"]
    rows = {r["id"]: r for r in KB(tmp_path / "kb").table.to_arrow().to_pylist()}
    assert rows["E1"]["name"] == "Entity number 1"  # the first line's entity


def test_an_alias_prior_is_a_probability_and_one_above_1_refuses_its_line(tmp_path):
    """An alias prior is p(entity | alias) (README, the KB section): 1.5 was taken silently.
    Its line is refused naming the field, the rest builds; an entity's own prior has no upper
    bound in the docs (popularity or p(entity | mention)), so 3.0 stays accepted."""
    rows = [{"id": "A", "name": "Alpha", "aliases": [{"name": "Al", "prior": 1.5}]},
            {"id": "B", "name": "Beta", "aliases": [{"name": "Be", "prior": 1.0}], "prior": 3.0},
            {"id": "C", "name": "Gamma", "aliases": ["G", {"name": "Ga", "prior": 0}]}]
    src = write_jsonl(tmp_path / "e.jsonl", rows)
    said: list[str] = []
    meta = build(src, tmp_path / "kb", embedder=EMB, encode=encoder(), progress=False,
                 warn=said.append)
    assert meta["bad"] == 1 and meta["entities"] == 2
    assert said == [f"{src} line 1: 'aliases': the prior of alias 'Al' is p(entity | alias), a "
                    "probability within 0..1, not 1.5; skipped"]
    got = {r["id"]: r for r in KB(tmp_path / "kb").table.to_arrow().to_pylist()}
    assert got["B"]["prior"] == 3.0 and got["B"]["alias_priors"] == [1.0]
    # a dataset's candidate priors become alias priors as the data gave them (its generator's
    # scores); the aliases a candidate writes itself are checked as an entity's are
    data = {"m1": {"mention": "Al", "Candentity": [
        {"qid": "Q1", "name": "Alpha", "prior": 4.0},
        {"qid": "Q2", "name": "Beta", "aliases": [{"name": "B", "prior": 2}]}]}}
    got_ds = list(read_dataset(write_jsonl(tmp_path / "d.json", [json.dumps(data)])))
    assert [getattr(e, "id", None) for e in got_ds] == ["Q1", None]
    assert dict(got_ds[0].alias_priors) == {"al": 4.0}
    assert "record m1 candidate 1: 'aliases': the prior of alias 'B'" in str(got_ds[1])


@pytest.mark.parametrize("how", ["every line bad", "error mid-build"])
def test_a_failed_build_removes_the_folder_it_made_and_only_that(tmp_path, how):
    """A failed build into a new folder left it behind (with an unfinished kb.json, which a
    later `--kb` reported as a build that did not finish): the folder it made, parents
    included, is removed; a folder that was there before the build is kept."""
    if how == "every line bad":
        src = write_jsonl(tmp_path / "e.jsonl", ["{not json", {"id": "x"}])
        encode, error = encoder(), kb_index.KBError
    else:
        src = write_jsonl(tmp_path / "e.jsonl", entities(range(12)))
        done: list[str] = []

        def encode(texts):  # the second batch fails
            if done:
                raise RuntimeError("the embedder died")
            done.extend(texts)
            return encoder()(texts)
        error = RuntimeError
    new = tmp_path / "new" / "kb"
    with pytest.raises(error):
        build(src, new, embedder=EMB, encode=encode, batch_size=4, progress=False, warn=None)
    assert not (tmp_path / "new").exists()
    there = tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("mine")
    if how == "error mid-build":
        done.clear()
    with pytest.raises(error):
        build(src, there, embedder=EMB, encode=encode, batch_size=4, progress=False, warn=None)
    assert (there / "notes.txt").read_text() == "mine"


def test_a_failed_build_removes_a_folder_it_made_on_the_way_through_dotdot(tmp_path):
    """`--out new/../kb` makes 'new' (as `mkdir -p` does) on the way to 'kb', beside it, not
    above it: a failed build removed 'kb' and left 'new' behind; both are removed, and a folder
    the path passes through that was there ('there/..') is kept with what it holds."""
    src = write_jsonl(tmp_path / "e.jsonl", ["{not json", {"id": "x"}])  # the build fails
    there = tmp_path / "there"
    there.mkdir()
    (there / "notes.txt").write_text("mine")
    for out in (tmp_path / "new" / ".." / "kb", tmp_path / "new" / ".." / "there" / ".." / "kb",
                there / ".." / "new" / ".." / "new2" / "kb"):
        with pytest.raises(kb_index.KBError):
            build(src, out, embedder=EMB, encode=encoder(), batch_size=4, progress=False,
                  warn=None)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl", "there"], out
        assert (there / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, out):
    """`--out ""` (an unset shell variable) built the KB into the current folder, among the
    user's files: an empty path names no folder and is refused before anything is written."""
    src = write_jsonl(tmp_path / "e.jsonl", entities(range(3)))
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    with pytest.raises(kb_index.KBError, match="empty"):
        build(src, out, embedder=EMB, encode=encoder(), batch_size=4, progress=False, warn=None)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("nested", [False, True], ids=["the folder", "under a parent it made"])
def test_a_failed_build_never_removes_a_folder_another_build_made_meanwhile(
        tmp_path, monkeypatch, nested):
    """The build decided which folder it made by looking before its mkdir: another build that
    made the folder in that instant (and filled it) lost it when this build then failed. Now the
    mkdir itself decides: the other's folder, and a parent this build made that holds it, stay."""
    src = write_jsonl(tmp_path / "e.jsonl", ["{not json", {"id": "x"}])  # the build fails
    out = tmp_path / "new" / "kb" if nested else tmp_path / "kb"
    real_mkdir = Path.mkdir
    raced: list[Path] = []

    def mkdir(self, *a, **k):
        if self == out and not raced:  # the other build makes the folder first
            raced.append(self)
            real_mkdir(self, parents=True, exist_ok=True)
            (self / "theirs.txt").write_text("the other build's")
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(kb_index.KBError):
        build(src, out, embedder=EMB, encode=encoder(), batch_size=4, progress=False, warn=None)
    assert raced == [out]
    assert (out / "theirs.txt").read_text() == "the other build's"
