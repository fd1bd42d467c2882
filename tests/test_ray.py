"""--engine ray: the streaming reader, the same answers as one process, exactly-once output after
an actor is killed, resume after the driver is killed, and a two-node cluster. Every Ray here is
on 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), small (2 CPUs, 100 MB object store), and
shut down at the end of its test."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE_IDS, EXAMPLES, write_jsonl

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

LINK = [sys.executable, "-m", "i2cr.cli", "link"]
FIELDS = ("id", "answer", "is_nil", "final_reason", "path", "error", "gold", "correct")


# the shipped examples that carry clues (so VIF runs), in the file's order
CLUED = ["jordan-nba", "obama-podium", "paris-painting", "cambridge-rowing"]


def _records(copies: int) -> list[dict]:
    """The shipped examples of :data:`CLUED` (without their images), ``copies`` times under new
    ids."""
    base = {k: v for k, v in json.loads((EXAMPLES / "mentions.json").read_text()).items()
            if k in CLUED}
    gold = json.loads((EXAMPLES / "labels.json").read_text())
    out = []
    for k in range(copies):
        for rid, r in base.items():
            r = {key: v for key, v in r.items() if key != "mention_imgpath"}
            out.append({**r, "id": f"{rid}-{k}", "label": gold.get(rid)})
    return out


def _write(path: Path, recs: list, extra: list[str] = ()) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + "".join(extra))
    return path


def _key(rec: dict) -> tuple:
    return tuple(json.dumps(rec.get(k), sort_keys=True) for k in FIELDS)


def _local(path: Path) -> list[dict]:
    from i2cr.data import load_mentions
    from i2cr.eval.runner import check_items, run
    from i2cr.graph import Context

    return list(run(check_items(load_mentions(path, strict=False), warn=None), Context(),
                    progress=False))


# --- the streaming reader (no Ray) ------------------------------------------------------------


def test_stream_reads_the_json_dict_like_the_loader_in_bounded_memory(tmp_path, monkeypatch):
    from i2cr.data import DataError, iter_records
    from i2cr.engine import stream

    recs = {f"m{i}": {"mention": "Jordan", "mention_context": "x" * 200, "Candentity": ["a"]}
            for i in range(300)}
    text = json.dumps(recs)[:-1] + ', "deeper": ' + "[" * 5000 + "]" * 5000 + ', "last": ' \
        + json.dumps({"mention": 'é "q"', "Candentity": []}) + "}"
    p = tmp_path / "d.json"
    p.write_text(text)
    monkeypatch.setattr(stream, "CHUNK", 512)
    peak = []
    more = stream._Buffer.more

    def spy(self, want=512):
        got = more(self, want)
        peak.append(len(self.text) - self.pos)
        return got
    monkeypatch.setattr(stream._Buffer, "more", spy)

    def norm(pairs):
        return [(k, str(v) if isinstance(v, DataError) else v) for k, v in pairs]
    got = norm(stream.iter_stream(p))
    assert got == norm(iter_records(p))  # the same records, the too-deep one as an error
    assert any(k == "deeper" and "too deeply" in str(v) for k, v in got)
    assert len(text) > 60_000 and max(peak) < 12_000  # never the whole file in the buffer


def test_stream_reports_a_broken_document_after_the_records_before_it(tmp_path):
    from i2cr.data import DataError
    from i2cr.engine.stream import iter_stream

    p = tmp_path / "d.json"
    p.write_text('{"a": {"mention": "x"}, "b": {"mention": "y"} "c": 1}')
    it = iter_stream(p)
    assert next(it)[0] == "a"
    with pytest.raises(DataError, match=r"d\.json: malformed JSON at character \d+"):
        list(it)


def test_single_process_never_imports_ray(tmp_path):
    code = ("import sys; from i2cr.cli import main; "
            f"rc = main(['link', {str(EXAMPLES / 'mentions.json')!r}, '--no-progress', "
            f"'--out', {str(tmp_path / 'r.jsonl')!r}]); "
            "print('RAY' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) "
            "else 'NO-RAY', rc)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.stdout.split()[-2:] == ["NO-RAY", "0"], p.stderr[-2000:]
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == len(EXAMPLE_IDS)


# --- Ray in this process ----------------------------------------------------------------------


@pytest.fixture(scope="class")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             object_store_memory=100 * 1024 * 1024,
             logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


def test_a_relative_kb_path_reaches_the_workers_absolute(tmp_path, monkeypatch):
    """Workers on other nodes do not share the driver's working folder."""
    import argparse

    from i2cr import Context
    from i2cr.engine.commands import _job

    (tmp_path / "m.jsonl").write_text('{"id": "a", "mention": "Apple", "context": ""}\n')
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(file="m.jsonl", image_root=None, limit=None, concurrency=1)
    job = _job(args, Context(kb="mykb"), labels=None, candidates="optional", shuffle_seed=None,
               allow_nil=None)
    assert job.settings.kb == str(tmp_path / "mykb")


def test_the_workers_cache_failures_add_up_in_the_drivers_closing_line(tmp_path):
    """What a Ray worker sends per batch (store.report: since its batch before) and how the
    driver keeps it (store.adopt): one phrase per cache, the damaged entries added up."""
    from i2cr.store import CheckedStore, Failure, adopt, mark, problems, report

    worker = CheckedStore(str(tmp_path / "w"), "embedding cache", 2 ** 20)
    since = mark()
    worker.report_damage(12)
    first, since = report(since)
    worker.report_damage(7)
    second, since = report(since)
    assert [f.damaged for f in first + second] == [12, 7] and report(since)[0] == []
    start = mark()  # the driver's run: two batches of one worker, one of another
    adopt(first + [Failure("embedding cache", str(tmp_path / "w"), None, 3)] + second)
    assert [p.split(";")[0] for p in problems(start)] == [
        "embedding cache: has damaged entries (22 found"]


@pytest.mark.integration
@pytest.mark.usefixtures("local_ray")
class TestLocalRay:
    def test_same_answers_as_one_process_and_bad_records_become_error_records(self, tmp_path):
        from i2cr.engine.ray_engine import Job, RayStats, run_ray
        from i2cr.eval.runner import read_results
        from i2cr.graph import Context

        recs = _records(2)
        recs.insert(3, {"id": "no-mention", "mention_context": "x", "Candentity": ["a"]})
        recs.append(dict(recs[0]))  # a repeated id
        data = _write(tmp_path / "in.jsonl", recs, ["{not json\n", json.dumps({"id": "e"}) + "\n"])
        want = _local(data)
        st = RayStats()
        said: list[str] = []
        got = list(run_ray(Job(path=str(data), settings=Context()), out=tmp_path / "r.jsonl",
                           workers=2, batch_size=2, progress=False, stats=st, warn=said.append))
        assert [_key(r) for r in got] == [_key(r) for r in want]
        assert [_key(r) for r in read_results(tmp_path / "r.jsonl")] == [_key(r) for r in want]
        errors = {r["id"]: r["error"] for r in got if r["error"]}
        assert set(errors) == {"no-mention", "line 11", "e", "jordan-nba-0#dup2"}
        assert "field 'mention': is missing" in errors["no-mention"]
        assert "malformed JSON" in errors["line 11"]
        assert st.errors == 4 and st.batches >= 6 and st.produced == len(want)
        assert st.linked == len(want) - 4  # an error record is not a mention linked
        # each bad record named once, and the repeat as one, in the words of one process (the
        # repeated id was not named)
        assert sum("record 'line 11': malformed JSON" in w for w in said) == 1, said
        assert sum("record 'no-mention'" in w for w in said) == 1, said
        assert ("1 record(s) repeat an id already used ('jordan-nba-0'): the first is linked, "
                "each repeat becomes an error record '<id>#dup<k>'") in "\n".join(said), said

    def test_an_actor_killed_mid_run_costs_nothing(self, tmp_path):
        from i2cr.engine.ray_engine import Job, RayStats, read_parquet_results, run_ray
        from i2cr.graph import Context
        from i2cr.linker import link_mention

        data = _write(tmp_path / "in.jsonl", _records(3))
        want = {r["id"]: _key(r) for r in _local(data)}
        marker = str(tmp_path / "killed")

        def killer(m, settings):  # the first actor to reach this mention dies at once
            if m.id == "paris-painting-1" and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return link_mention(m, settings)

        st = RayStats()
        out = tmp_path / "r.parquet"
        got = list(run_ray(Job(path=str(data), settings=Context(), linker=killer), out=out,
                           workers=2, batch_size=2, progress=False, stats=st))
        assert os.path.exists(marker)  # the actor did die
        ids = [r["id"] for r in read_parquet_results(out)]
        assert sorted(ids) == sorted(want) and len(ids) == len(set(ids))  # exactly once
        assert {r["id"]: _key(r) for r in got} == want


    def test_a_kb_is_read_by_the_workers_with_the_answers_of_one_process(self, kb_dir, tmp_path,
                                                                          monkeypatch, capsys):
        import i2cr.kb.index
        from i2cr.cli import main
        from i2cr.eval.runner import read_results

        data = write_jsonl(tmp_path / "m.jsonl", [
            {"id": "m1", "mention": "Apple", "context": "Apple unveiled a new iPhone at its "
             "technology conference", "label": "Apple_Inc."},
            {"id": "m2", "mention": "Jordan", "context": "Amman is the capital of Jordan",
             "candidates": []},
            {"id": "m3", "mention": "Hilton", "context": "Hilton arrives at the premiere with her "
             "new handbag", "label": "Paris Hilton"},
            {"id": "m4", "mention": "Jordan", "context": "Jordan scored 38 points for the Bulls "
             "in game five of the NBA finals"}])
        args = [str(data), "--kb", kb_dir, "--set", "iav_mode=off", "--no-progress"]
        assert main(["link", *args, "--out", str(tmp_path / "one.jsonl")]) == 0
        want = read_results(tmp_path / "one.jsonl")

        def refuse(*a, **kw):  # the driver only checks the KB's metadata; the workers query it
            raise AssertionError("the KB was queried in the driver")
        for name in ("generate", "lexical", "dense", "vectors"):
            monkeypatch.setattr(i2cr.kb.index.KB, name, refuse)
        capsys.readouterr()
        rc = main(["link", *args, "--engine", "ray", "--workers", "2", "--batch-size", "2",
                   "--out", str(tmp_path / "ray.jsonl")])
        err = capsys.readouterr().err
        assert rc == 0, err[-3000:]
        got = read_results(tmp_path / "ray.jsonl")
        assert [_key(r) for r in got] == [_key(r) for r in want]
        assert [r["answer"] for r in got] == ["Apple_Inc.", "Jordan", "Paris Hilton",
                                              "Michael Jordan"]
        assert all(r["path"][0] == "retrieve" for r in got)  # candidates from the KB
        assert "2 batch(es)" in err

    def test_a_bad_record_is_named_on_stderr_as_the_local_engine_names_it(self, tmp_path,
                                                                          capsys):
        """A bad gold label or bad data: one line per record, in the local engine's words."""
        from i2cr.cli import main

        good = _records(1)[:2]  # two mentions with their own (good) labels
        data = write_jsonl(tmp_path / "m.jsonl", [
            good[0], {**good[1], "id": "num", "label": 7}, {**good[1], "id": "blank", "label": " "},
            {**{k: v for k, v in good[1].items() if k != "label"}, "id": "nolabel"}, "{not json",
            {**{k: v for k, v in good[1].items() if k != "mention"}, "id": "nomention"}])
        labels = tmp_path / "labels.json"  # a labels file's null: unusable too
        labels.write_text(json.dumps({"nolabel": None, good[0]["id"]: good[0]["label"]}))
        args = [str(data), "--labels", str(labels), "--no-progress", "--set", "iav_mode=off"]

        def bad_lines(engine: list[str], out: str) -> list[str]:
            capsys.readouterr()
            rc = main(["link", *args, *engine, "--out", str(tmp_path / out)])
            err = capsys.readouterr().err
            assert rc == 1, err[-3000:]  # an error record: the exit code says so
            return [x for x in err.splitlines() if "the record is not linked" in x]

        local = bad_lines([], "one.jsonl")
        ray = bad_lines(["--engine", "ray", "--workers", "1", "--batch-size", "2"], "ray.jsonl")
        assert len(local) == 5 and ray == local  # one line per record, the same words
        for rid in ("num", "blank", "nolabel", "line 5", "nomention"):
            assert sum(f"record {rid!r}" in x for x in ray) == 1, ray

    def test_a_cache_failing_in_the_workers_is_in_the_closing_line_and_the_exit_code(
            self, tmp_path, capsys):
        """An embedding cache overwritten with random bytes: the workers warned of it on their
        stderr, but the driver's closing lines did not say it and the exit code was 0. Now the
        workers send their cache failures with their batches: the local engine's line, once
        for two workers, and exit code 1."""
        from i2cr.cli import main

        emb = tmp_path / "emb"
        emb.mkdir()
        (emb / "cache.db").write_bytes(os.urandom(40_000))
        args = [str(EXAMPLES / "mentions.json"), "--no-progress", "--set", "iav_mode=off",
                "--set", f"embedding_cache={emb}", "--set", "clue_cache=none"]

        def closing(engine: list[str]) -> tuple[int, list[str]]:
            capsys.readouterr()
            rc = main(["link", *args, *engine])
            err = capsys.readouterr().err
            return rc, [x for x in err.splitlines() if x.startswith("i2cr: cache failure")]

        local = closing([])
        assert local == (1, ["i2cr: cache failure, embedding cache: is unusable (DatabaseError: "
                             "file is not a database); running without it (remove it to have "
                             "it rebuilt)."])
        assert closing(["--engine", "ray", "--workers", "2", "--batch-size", "2"]) == local

    def test_a_file_not_grouped_by_document_is_warned_of_as_the_local_engine_does(self,
                                                                                 tmp_path):
        from i2cr.data import load_mentions
        from i2cr.engine.ray_engine import Job, run_ray
        from i2cr.graph import Context

        docs = ["d1", "d2", "d1", "d1"]
        recs = [{**r, "doc_id": d} for r, d in zip(_records(1)[:4], docs, strict=True)]
        data = _write(tmp_path / "m.jsonl", recs)
        local: list[str] = []
        load_mentions(data, strict=False, warn=local.append)
        ray: list[str] = []
        got = list(run_ray(Job(path=str(data), settings=Context(), dry_run=True), workers=1,
                           batch_size=2, progress=False, warn=ray.append))
        assert len(got) == 4 and ray == local and len(local) == 1
        assert local[0].startswith("2 record(s) continue a document")

    def test_labels_naming_no_record_are_warned_of_as_the_local_engine_does(self, tmp_path,
                                                                           capsys):
        """The driver checks the labels against every id of the file (with a limit too: the
        ids the workers were not given are streamed), in one line in the local engine's words,
        and eval's metrics.json keeps them."""
        from i2cr.cli import main
        from i2cr.data import load_labels
        from i2cr.engine.ray_engine import Job, RayStats, run_ray
        from i2cr.eval.runner import check_labels
        from i2cr.graph import Context

        recs = _records(1)
        data = _write(tmp_path / "m.jsonl", recs)
        labels = tmp_path / "labels.json"
        labels.write_text(json.dumps({recs[0]["id"]: "Michael Jordan", "typo": "nil",
                                      "other": None}))
        local: list[str] = []
        want = check_labels(load_labels(labels), {r["id"] for r in recs}.__contains__,
                            warn=local.append)
        assert want == {"labels": 3, "count": 2, "first": ["typo", "other"]} and len(local) == 1
        for limit in (None, 2):
            ray: list[str] = []
            st = RayStats()
            job = Job(path=str(data), settings=Context(), labels=str(labels), limit=limit,
                      dry_run=True)
            list(run_ray(job, workers=1, batch_size=2, progress=False, warn=ray.append, stats=st))
            assert [w for w in ray if "label(s)" in w] == local
            assert st.labels_unmatched == want
        capsys.readouterr()
        assert main(["eval", str(data), str(labels), "--engine", "ray", "--workers", "1",
                     "--no-progress", "--set", "iav_mode=off", "--out-dir",
                     str(tmp_path / "ev")]) == 0
        assert [x for x in capsys.readouterr().err.splitlines() if "label(s)" in x] == [
            f"i2cr: warning: {local[0]}"]
        m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert m["labels_unmatched"] == want

    def test_link_with_limit_checks_the_labels_against_every_record_of_the_file(self, tmp_path,
                                                                                 capsys):
        """``link --engine ray --limit`` said nothing of labels naming no record (the driver
        checked only without a limit); it now says them as the local engine does: against every
        record of the file, so a label of a record past the limit is not one of them."""
        from i2cr.cli import main

        recs = _records(1)  # four records; --limit 2 reads the first two
        data = _write(tmp_path / "m.jsonl", recs)
        labels = tmp_path / "labels.json"
        labels.write_text(json.dumps({recs[0]["id"]: "Michael Jordan", recs[3]["id"]: "nil",
                                      "typo-1": "nil", "typo-2": "Barack Obama"}))
        line = ("i2cr: warning: 2 of the 4 label(s) name no record of the data ('typo-1', "
                "'typo-2'): they are not scored (a typo in an id, or labels of another split?)")
        said = {}
        for engine in (["--engine", "ray", "--workers", "1", "--batch-size", "2"], []):
            capsys.readouterr()
            main(["link", str(data), "--labels", str(labels), "--limit", "2", "--no-progress",
                  "--set", "iav_mode=off", "--out", str(tmp_path / "r.jsonl"), *engine])
            said[bool(engine)] = [x for x in capsys.readouterr().err.splitlines()
                                  if "label(s)" in x]
        assert said == {True: [line], False: [line]}

    def test_the_label_of_a_line_that_cannot_be_read_is_its_not_unmatched(self, tmp_path):
        """A line that cannot be read is named by its place (line N); the label for the id its
        text still gives was counted among the labels naming no record, and not scored. It is
        the bad record's label (scored as wrong), as in the local engine."""
        from i2cr.data import load_labels, load_mentions
        from i2cr.engine.ray_engine import Job, RayStats, run_ray
        from i2cr.eval.runner import check_items, check_labels, named_ids
        from i2cr.graph import Context

        recs = _records(1)[:2]
        cut = json.dumps(recs[1])[:60]  # the second record, cut off after its id
        assert cut.startswith('{"id": ') and not cut.endswith("}")
        data = _write(tmp_path / "in.jsonl", recs[:1], [cut + "\n"])
        labels = tmp_path / "labels.json"
        labels.write_text(json.dumps({r["id"]: r["label"] for r in recs} | {"typo": "nil"}))
        said: list[str] = []
        st = RayStats()
        got = list(run_ray(Job(path=str(data), settings=Context(), labels=str(labels),
                               dry_run=True), workers=1, batch_size=2, progress=False,
                           warn=said.append, stats=st))
        assert [r["id"] for r in got] == [recs[0]["id"], "line 2"]
        assert st.labels_unmatched == {"labels": 3, "count": 1, "first": ["typo"]}
        local: list[str] = []
        items = load_mentions(data, labels, strict=False)
        check_labels(load_labels(labels), named_ids(items).__contains__, warn=local.append)
        check_items(items, load_labels(labels), warn=local.append)
        assert sorted(said) == sorted(local) and len(said) == 2, said
        assert any("record 'line 2'" in w and w.endswith("scored as a wrong answer")
                   for w in said), said

    def test_resume_does_not_name_again_the_bad_records_and_repeats_in_out(self, tmp_path):
        """A bad record and a repeat already in --out are not linked again on --resume: they
        were named again (the local engine's rule: check_items's ``done``)."""
        from i2cr.engine.ray_engine import Job, RayStats, run_ray
        from i2cr.graph import Context

        recs = _records(1)[:2]
        data = _write(tmp_path / "in.jsonl", recs + [recs[0]], ["{not json\n"])
        out = tmp_path / "r.jsonl"
        said: list[str] = []

        def linked(resume: bool) -> list[dict]:
            said.clear()
            return list(run_ray(Job(path=str(data), settings=Context(), dry_run=True), out=out,
                                resume=resume, workers=1, batch_size=2, progress=False,
                                stats=RayStats(), warn=said.append))

        assert len(linked(False)) == 4
        assert sum("record 'line 4': malformed JSON" in w for w in said) == 1, said
        assert sum("1 record(s) repeat an id already used" in w for w in said) == 1, said
        assert linked(True) == [] and said == [], said

    def test_resume_warns_of_the_records_it_links_not_of_those_already_in_out(self, tmp_path):
        """The input's warnings (a document's records apart, a null id) counted every record
        read, those an earlier run had linked too, so each --resume said them again. Now they
        count the records this run links, with how many more were skipped, as the local engine
        says them; nothing when every record is done."""
        from i2cr.data import load_mentions
        from i2cr.engine.ray_engine import Job, RayStats, run_ray
        from i2cr.eval.runner import check_items
        from i2cr.graph import Context

        rows = [("a", "d1"), ("b", "d2"), ("c", "d1"), (None, "d3"), ("e", "d2")]
        data = _write(tmp_path / "in.jsonl", [{**r, "id": rid, "doc_id": doc} for r, (rid, doc)
                                              in zip(_records(2), rows, strict=False)])
        out = tmp_path / "r.jsonl"
        said: list[str] = []

        def linked(resume: bool, limit: int | None = None) -> list[str]:
            said.clear()
            job = Job(path=str(data), settings=Context(), dry_run=True, limit=limit)
            return [r["id"] for r in run_ray(job, out=out, resume=resume, workers=1,
                                             batch_size=2, progress=False, stats=RayStats(),
                                             warn=said.append)]

        assert linked(False, limit=3) == ["a", "b", "c"]
        assert [w.split(" (")[0] for w in said] == ["1 record(s) continue a document"]
        assert linked(True) == ["None", "e"]
        local: list[str] = []  # the local engine's words for the same resume
        check_items(load_mentions(data, strict=False, warn=local.append, done={"a", "b", "c"}),
                    warn=local.append, done={"a", "b", "c"})
        assert said == local and len(said) == 2, said
        assert said[0].endswith("(1 more already in the output, skipped)")
        assert said[1].startswith("1 record(s) have a null or empty id")
        assert linked(True) == [] and said == []

    def test_the_drivers_memory_does_not_grow_with_the_ids(self, tmp_path):
        import tracemalloc

        from i2cr.engine.ray_engine import Job, run_ray
        from i2cr.eval.runner import read_results
        from i2cr.graph import Context

        n = 20_000
        recs = [{"id": f"mention-{i:06d}", "mention": "x", "mention_context": "",
                 "Candentity": ["a"]} for i in range(n)]
        recs[n // 2] = recs[n - 1] = recs[1]  # a repeated id, numbered as in one process
        data = _write(tmp_path / "in.jsonl", recs)
        out = tmp_path / "r.jsonl"
        ours = [tracemalloc.Filter(True, f"*{os.sep}i2cr{os.sep}{f}")
                for f in ("engine/*", "eval/runner.py")]
        tracemalloc.start()
        try:
            sizes = []
            for i, _ in enumerate(run_ray(Job(path=str(data), settings=Context(), dry_run=True),
                                          out=out, workers=2, batch_size=1000, progress=False,
                                          warn=None), 1):
                if i in (2_000, n):  # the run going on, its generator alive
                    snap = tracemalloc.take_snapshot().filter_traces(ours)
                    sizes.append(sum(t.size for t in snap.traces))
        finally:
            tracemalloc.stop()
        # the driver's own allocations: flat (a set and a Counter of the ids grew ~2 MB here)
        assert sizes[1] - sizes[0] < 100_000, sizes
        ids = [r["id"] for r in read_results(out)]
        assert len(ids) == n == len(set(ids))
        assert ids[n // 2] == "mention-000001#dup2" and ids[-1] == "mention-000001#dup3"

    def test_a_broken_document_fails_in_one_line(self, tmp_path):
        from i2cr.data import DataError
        from i2cr.engine.ray_engine import Job, run_ray
        from i2cr.graph import Context

        data = tmp_path / "d.json"
        data.write_text('{"a": {"mention": "x", "mention_context": "", "Candentity": ["p"]}, '
                        '"b" {}}')
        with pytest.raises(DataError) as e:
            list(run_ray(Job(path=str(data), settings=Context(), dry_run=True), workers=1,
                         progress=False))
        assert str(e.value) == f"{data}: malformed JSON at character 73: expected ':' after a " \
            "record id"

    def test_one_embedded_llm_server_per_node_stopped_with_the_run(self):
        pytest.importorskip("llama_cpp")
        import httpx
        import ray

        from i2cr.engine.ray_engine import _node_llm, _start_servers, _stop_servers
        from i2cr.graph import Context
        from i2cr.llm import BackendError, smollm2_gguf

        try:
            smollm2_gguf()
        except BackendError:
            pytest.skip("no SmolLM2 GGUF installed")
        settings = Context(llm="embedded")
        servers = _start_servers(settings)
        try:
            assert len(servers) == 1  # one node here
            node = ray.get_runtime_context().get_node_id()
            mine = _node_llm(settings, node)  # what an actor on this node links with
            assert mine.llm.startswith("openai-compat:embedded@http://127.0.0.1:")
            url = mine.llm.split("@", 1)[1]
            assert httpx.get(f"{url}/models", timeout=30).status_code == 200
            assert _node_llm(settings, "another-node").llm == "embedded"  # none there: its own
        finally:
            _stop_servers(servers)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/models", timeout=5)


# --- Ray started by the CLI -------------------------------------------------------------------


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.integration
def test_resume_after_the_driver_is_killed(tmp_path):
    pytest.importorskip("ray")
    from i2cr.eval.runner import read_results

    recs = _records(15)
    data = _write(tmp_path / "in.jsonl", recs)
    out = tmp_path / "r.jsonl"
    args = LINK + [str(data), "--engine", "ray", "--workers", "1", "--batch-size", "2", "--out",
                   str(out), "--no-progress"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 500  # bounds a broken run only; the wait is on the file
        while _lines(out) < 2 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.poll() is None, "the run ended before it could be killed"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=60)
    first = {r["id"] for r in read_results(out, warn=None)}
    assert 2 <= len(first) < len(recs)
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = [x["id"] for x in read_results(out)]
    assert sorted(ids) == sorted(x["id"] for x in recs)  # every id, exactly once
    assert f"{len(recs) - len(first)} mention(s) linked" in r.stderr
    # the Ray the CLI started is loopback only: every batch came from a worker on 127.0.0.1
    assert set(re.findall(r"…@([0-9.]+):", r.stderr)) == {"127.0.0.1"}, r.stderr[-2000:]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A two-node cluster on 127.0.0.1 (one CPU each; started once for the tests below), each
    node with a home of its own (``homes``: what ``~`` is to its workers, as on two machines)."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("nodes")
    homes = {n: root / n for n in ("head", "node")}
    for h in homes.values():
        h.mkdir()
    node_args = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024}
    with pytest.MonkeyPatch.context() as mp:
        # a ray.init earlier in this process turned Ray's token auth on for it (RAY_AUTH_MODE),
        # its token under this process's home, which these nodes do not share: off here, for
        # the nodes and the drivers run against them (a loopback-only test cluster)
        mp.setenv("RAY_AUTH_MODE", "disabled")
        cluster = Cluster(initialize_head=True, head_node_args={
            **node_args, "include_dashboard": False, "env_vars": {"HOME": str(homes["head"])}})
        try:
            cluster.add_node(**node_args, env_vars={"HOME": str(homes["node"])})
            assert cluster.address.startswith("127.0.0.1:")
            cluster.homes = homes
            yield cluster
        finally:
            cluster.shutdown()


@pytest.mark.integration
def test_eval_on_a_two_node_cluster_through_ray_address(tmp_path, two_nodes):
    from i2cr.eval.runner import read_results

    recs = _records(3)
    data = _write(tmp_path / "in.jsonl", recs)
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({r["id"]: r["label"] for r in recs}))
    r = subprocess.run([sys.executable, "-m", "i2cr.cli", "eval", str(data), str(labels),
                        "--engine", "ray", "--ray-address", two_nodes.address, "--workers", "2",
                        "--batch-size", "2", "--out-dir", str(tmp_path / "ev"),
                        "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = read_results(tmp_path / "ev" / "results.jsonl")
    assert sorted(x["id"] for x in got) == sorted(x["id"] for x in recs)
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["labelled"] == len(recs) and metrics["errors"] == 0
    # two 1-CPU actors, so one per node; which of them links each batch is Ray's dispatch (on a
    # busy machine one actor may finish the first batch before the reader yields the second), so
    # the batches may have run on one node or both: a timing, not a behaviour, to assert on
    assert "ray: 2 worker(s)" in r.stderr, r.stderr[-3000:]
    assert re.search(r"batch\(es\) on [12] node\(s\)", r.stderr), r.stderr[-3000:]


@pytest.mark.integration
def test_a_worker_that_links_no_batch_still_reports_its_caches(tmp_path, two_nodes):
    """Each worker sent its cache failures with its batches only: a worker given none (more
    workers than batches) sent nothing, so a cache broken on its node was missing from the
    closing lines and the exit code. Two nodes, each its own home and caches (``~/...``): the
    head's clue cache and the other node's embedding cache are broken, and one record's batch
    goes to one of the two workers; both failures are said, as each node's run would say it."""
    homes = two_nodes.homes
    (homes["head"] / "clues").write_text("a file where the cache's folder should be")
    (homes["node"] / "emb").mkdir()
    (homes["node"] / "emb" / "cache.db").write_bytes(os.urandom(40_000))
    (tmp_path / "driver").mkdir()
    data = _write(tmp_path / "in.jsonl", _records(1)[:1])
    try:
        r = subprocess.run(LINK + [str(data), "--engine", "ray", "--ray-address",
                                   two_nodes.address, "--workers", "2", "--no-progress",
                                   "--set", "iav_mode=off", "--set", "embedding_cache=~/emb",
                                   "--set", "clue_cache=~/clues"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "HOME": str(tmp_path / "driver")})
    finally:
        (homes["head"] / "clues").unlink()
        shutil.rmtree(homes["node"] / "emb")
    said = sorted(x.split(" (")[0] for x in r.stderr.splitlines()
                  if x.startswith("i2cr: cache failure"))
    assert said == ["i2cr: cache failure, clue cache: is unusable",
                    "i2cr: cache failure, embedding cache: is unusable"], r.stderr[-3000:]
    assert r.returncode == 1 and "Michael Jordan" in r.stdout, r.stderr[-3000:]
