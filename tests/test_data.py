"""Loaders: the I2CR/MELBench JSON, labels and JSONL, and their errors."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLE_IDS, EXAMPLES, SHARED

from i2cr.data import DataError, load_labels, load_mentions


def write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


SAMPLE = {"mention": "Jordan", "mention_context": "Jordan dunks.", "mention_imgpath": "1.jpg",
          "Candentity": [{"qid": "Q41421", "name": "Michael Jordan", "desc": "basketball player"},
                         {"name": "Jordan", "desc": "a country"}]}


def test_i2cr_format_with_labels_and_image_root(tmp_path):
    p = write(tmp_path, "d.json", {"a-1": SAMPLE})
    lab = write(tmp_path, "l.json", {"a-1": "Michael Jordan"})
    [m] = load_mentions(p, lab, image_root="/imgs")
    assert m.id == "a-1" and m.label == "Michael Jordan"
    assert [c.name for c in m.candidates] == ["Michael Jordan", "Jordan"]
    assert m.candidates[0].qid == "Q41421"
    assert m.image_ref() == "/imgs/1.jpg"
    assert m.to_input()["image"] == "/imgs/1.jpg"


def test_url_images_are_kept_as_urls(tmp_path):
    p = write(tmp_path, "d.json", {"x": dict(SAMPLE, mention_imgpath="https://example.org/a.jpg")})
    [m] = load_mentions(p)
    assert m.image_ref() == "https://example.org/a.jpg"


def test_jsonl_form_with_short_names_and_nil(tmp_path):
    lines = [json.dumps({"id": "j1", "mention": "Paris", "context": "Paris the prince",
                         "candidates": ["Paris Hilton", {"name": "Paris", "desc": "city"}],
                         "label": "nil"}), "", json.dumps(dict(SAMPLE, id="j2"))]
    p = write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")
    m1, m2 = load_mentions(p)
    assert m1.label == "nil" and m1.allow_nil and [c.name for c in m1.candidates] == ["Paris Hilton", "Paris"]
    assert m2.id == "j2" and not m2.allow_nil


def test_malformed_json_names_the_file_and_position(tmp_path):
    p = write(tmp_path, "bad.json", '{"a": {"mention": "x",')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 1"):
        load_mentions(p)


@pytest.mark.parametrize("rec, field", [
    ({k: v for k, v in SAMPLE.items() if k != "mention"}, "mention"),
    ({k: v for k, v in SAMPLE.items() if k != "Candentity"}, "Candentity"),
    (dict(SAMPLE, Candentity=[]), "Candentity"),
    (dict(SAMPLE, Candentity=[{"desc": "no name"}]), "Candentity[0]"),
    (dict(SAMPLE, mention=3), "mention"),
    (dict(SAMPLE, mention_imgdesc_Azure="caption"), "mention_imgdesc_Azure"),
])
def test_bad_records_name_the_record_and_field(tmp_path, rec, field):
    p = write(tmp_path, "d.json", {"good": SAMPLE, "rec-7": rec})
    with pytest.raises(DataError) as e:
        load_mentions(p)
    assert e.value.record == "rec-7" and e.value.field == field
    assert "rec-7" in str(e.value) and field in str(e.value)
    good, bad = load_mentions(p, strict=False)  # lenient: the good record is kept
    assert good.id == "good" and isinstance(bad, DataError)


def test_bad_jsonl_line_loses_only_that_line(tmp_path):
    p = write(tmp_path, "d.jsonl", json.dumps(dict(SAMPLE, id="ok")) + "\n{not json\n")
    ok, bad = load_mentions(p, strict=False)
    assert ok.id == "ok" and isinstance(bad, DataError) and "line 2" in str(bad)


def test_a_bad_jsonl_line_names_only_its_own_line(tmp_path):
    # an error at the end of the line was placed on the JSON's 'line 2' (after the line's newline)
    p = write(tmp_path, "d.jsonl", json.dumps(dict(SAMPLE, id="ok")) + "\n[1, 2\n")
    _, bad = load_mentions(p, strict=False)
    assert str(bad) == f"{p}: record 'line 2': malformed JSON at column 6: Expecting ',' delimiter"


@pytest.mark.parametrize("text, rid", [
    ('{"id": "b", "mention": "Jordan", "Candentity": [', "b"),  # cut off
    ('{"x": {"a": [1, 2]}, "id" : 12 , "m": ', "12"),  # an integer id after a member
    ('  { "id": "a\\"b", "m": }', 'a"b'),
    ('{"id": 12', None),  # maybe cut off within the number
    ('{"id": "b" "m": 1}', None),  # the damage right after it
    ('{"a": [1, , "id": "x"}', None),  # the damage before it
    ('{"id": true, "m": ', None), ('{"id": 1.5, "m": ', None),  # not an id
    ('[{"id": "x"},', None), ('{"m": 1, "n": {"id": "x"}, ', None),  # not the record's own
])
def test_the_id_a_line_that_cannot_be_read_still_gives(text, rid):
    from i2cr.data import readable_id

    assert readable_id(text) == rid


def test_a_line_that_cannot_be_read_takes_the_label_of_the_id_it_gives(tmp_path):
    """It is named by its place (line N), so the label for the id its text gives was counted
    among the labels naming no record, and it was not scored: counted twice, as a bad record
    and as an unmatched label. Its label is now the bad record's (scored as wrong), not unmatched."""
    from i2cr.eval.runner import check_items, check_labels, named_ids

    bad_utf8 = b'{"id": "c", "mention": "J\xff'
    p = tmp_path / "d.jsonl"
    p.write_bytes(json.dumps(dict(SAMPLE, id="a")).encode() + b"\n"
                  + b'{"id": "b", "mention": "Jordan", "Candentity": [\n' + bad_utf8 + b"\n")
    labels = write(tmp_path, "l.json", json.dumps({"a": "x", "b": "y", "c": "z", "typo": "w"}))
    items = load_mentions(p, labels, strict=False)
    assert [(getattr(it, "record", None), it.label) for it in items] == [
        (None, "x"), ("line 2", "y"), ("line 3", "z")]
    said: list[str] = []
    gold = load_labels(labels)
    found = check_labels(gold, named_ids(items).__contains__, warn=said.append)
    assert found == {"labels": 4, "count": 1, "first": ["typo"]}
    check_items(items, gold, warn=said.append)
    assert [w.split(": ", 2)[1:] for w in said[1:]] == [
        ["record 'line 2'", "malformed JSON at column 49: Expecting value; the record is not "
         "linked: an error record, scored as a wrong answer"],
        ["record 'line 3'", "is not UTF-8 text (invalid start byte at byte 25 of the line); the "
         "record is not linked: an error record, scored as a wrong answer"]], said
    from i2cr.eval.harness import evaluate  # (and what eval keeps of them)
    from i2cr.graph import Context

    m = evaluate(p, labels, tmp_path / "ev", settings=Context(iav_mode="off"), progress=False,
                 warn=None)
    assert m["labels_unmatched"]["first"] == ["typo"] and m["labelled"] == 3
    assert m["errors"] == 2


def test_candidate_priors_are_kept_and_checked(tmp_path):
    p = tmp_path / "m.jsonl"
    good = {"id": "a", "mention": "Paris", "context": "", "candidates": [
        {"name": "Paris", "prior": 0.9}, {"name": "Paris, Texas", "prior": 1}, {"name": "Paris Hilton"}]}
    bad = {"id": "b", "mention": "Paris", "context": "", "candidates": [{"name": "Paris",
                                                                       "prior": "high"}]}
    neg = {"id": "c", "mention": "Paris", "context": "", "candidates": [{"name": "Paris",
                                                                       "prior": -1}]}
    p.write_text("\n".join(json.dumps(r) for r in (good, bad, neg)) + "\n")
    items = load_mentions(p, strict=False)
    assert [c.prior for c in items[0].candidates] == [0.9, 1.0, None]
    assert items[0].to_input()["candidates"][0]["prior"] == 0.9
    assert "prior" not in items[0].to_input()["candidates"][2]
    for e in items[1:]:
        assert isinstance(e, DataError) and "'prior' must be a non-negative number" in str(e)


def test_duplicate_candidates_are_dropped(tmp_path):
    p = write(tmp_path, "d.json", {"d": dict(SAMPLE, Candentity=["A", "a", "B"])})
    [m] = load_mentions(p)
    assert [c.name for c in m.candidates] == ["A", "B"]


def test_non_utf8_file_is_a_clear_error(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(b'{"a": {"mention": "\xff"}}')
    with pytest.raises(DataError, match="not UTF-8"):
        load_mentions(p)


def test_labels_must_be_strings(tmp_path):
    """A label that is not a string, or is blank, is an error of its record alone: the other
    labels are read (it stopped the whole file). Null is not guessed to mean NIL."""
    bad = {"n": None, "i": 3, "l": ["x"], "o": {"name": "x"}, "b": "  ", "t": True}
    p = write(tmp_path, "l.json", {"a": "Michael Jordan", "z": "NIL", **bad})
    gold = load_labels(p)
    assert dict(gold) == {"a": "Michael Jordan", "z": "nil"}
    assert set(gold.errors) == set(bad)
    for rid, err in gold.errors.items():
        assert isinstance(err, DataError) and str(err).startswith(f"{p}: record {rid!r}: ")
        assert '"nil" for NIL' in str(err) and "\n" not in str(err)
    assert "not null" in str(gold.errors["n"]) and "a number (3)" in str(gold.errors["i"])
    assert "is blank" in str(gold.errors["b"])
    for whole in ([1, 2], "not json {"):  # a file that is not an object stays a file error
        with pytest.raises(DataError, match=str(p)):
            load_labels(write(tmp_path, "l.json", whole))


def test_a_bad_label_makes_its_record_an_error_and_the_others_load(tmp_path):
    from i2cr.data import LabelError

    p = write(tmp_path, "d.json", {"a": SAMPLE, "b": SAMPLE})
    lab = write(tmp_path, "l.json", {"a": "Michael Jordan", "b": None, "absent": None})
    a, b = load_mentions(p, lab, strict=False)
    assert a.label == "Michael Jordan"
    assert isinstance(b, LabelError) and b.record == "b" and str(b).startswith(f"{lab}: ")
    with pytest.raises(LabelError, match="record 'b'"):
        load_mentions(p, lab)  # strict: the first bad record raises, as a bad record does
    a, b = load_mentions(p, {"a": "Jordan", "b": 7}, strict=False)  # labels given in code
    assert a.label == "Jordan" and isinstance(b, LabelError) and "a number (7)" in str(b)


def test_a_records_own_label_that_is_not_a_name_makes_it_an_error_null_is_none(tmp_path):
    """A record's own ``label`` follows the labels file's rule: a number or a blank is an error
    of that record (it was read as no label, silently); null is no label."""
    from i2cr.data import LabelError

    p = write(tmp_path, "d.json", {"a": {**SAMPLE, "label": "Michael Jordan"},
                                   "b": {**SAMPLE, "label": 3}, "c": {**SAMPLE, "label": None},
                                   "d": {**SAMPLE, "label": "  "}})
    a, b, c, d = load_mentions(p, strict=False)
    assert a.label == "Michael Jordan" and c.label is None
    assert isinstance(b, LabelError) and "field 'label'" in str(b) and "a number (3)" in str(b)
    assert isinstance(d, LabelError) and "blank" in str(d)


def test_shipped_examples_load():
    ms = load_mentions(EXAMPLES / "mentions.json", EXAMPLES / "labels.json")
    assert len(ms) == len(EXAMPLE_IDS) and all(m.label for m in ms)
    assert {m.id for m in ms if m.allow_nil} == {"paris-painting", "walters-abc", "walters-later"}


@pytest.mark.skipif(not SHARED.exists(), reason="shared WikiMEL dev data not present")
def test_wikimel_dev_loads_whole():
    ms = load_mentions(SHARED / "WikiMEL_dev.json", SHARED / "WikiMEL_dev_label.json")
    assert len(ms) == 1030
    assert all(len(m.candidates) == 10 and m.clues and m.label for m in ms)


def test_mentions_of_one_document_see_each_other(tmp_path):
    from i2cr.data import load_mentions

    recs = {"news::d1::0": {"mention": "Barbara Walters", "mention_context": "x",
                            "Candentity": [{"name": "Barbara Walters", "desc": ""}]},
            "news::d1::1": {"mention": "Walters", "mention_context": "y",
                            "Candentity": [{"name": "Barbara Walters", "desc": ""}]},
            "news::d2::0": {"mention": "Walters", "mention_context": "z",
                            "Candentity": [{"name": "Walters, Oklahoma", "desc": ""}]},
            "a": {"mention": "Walters", "mention_context": "w", "doc_id": "d9",
                  "Candentity": [{"name": "Walters, Oklahoma", "desc": ""}]},
            "b": {"mention": "Jo Walters", "mention_context": "w", "doc_id": "d9",
                  "Candentity": [{"name": "Jo Walters", "desc": ""}]},
            "c": {"mention": "Walters", "mention_context": "v", "document_mentions": ["Kim Walters"],
                  "Candentity": [{"name": "Kim Walters", "desc": ""}]}}
    p = tmp_path / "d.json"
    p.write_text(json.dumps(recs))
    got = {m.id: m.document for m in load_mentions(p)}
    assert got["news::d1::1"] == ["Barbara Walters"] and got["news::d1::0"] == ["Walters"]
    assert got["news::d2::0"] == []  # another document
    assert got["a"] == ["Jo Walters"] and got["c"] == ["Kim Walters"]  # doc_id; given explicitly
    m = [m for m in load_mentions(p) if m.id == "news::d1::1"][0]
    assert m.to_input()["document_mentions"] == ["Barbara Walters"]
    # a streaming reader (the Ray engine's) gives the same names, one document run at a time
    from i2cr.data import documents_of, iter_records, to_item

    streamed = {rid: to_item(rid, rec, source="s", gold={}, image_root=None).document
                for rid, rec, _ in documents_of(iter_records(p))}
    assert streamed == got


def _documents_both_ways(path):
    """Each record's document as the local loader gives it and as the streaming reader (the Ray
    engine's) does."""
    from i2cr.data import documents_of, iter_records, to_item

    local = {m.id: m.document for m in load_mentions(path, strict=False)}
    streamed = {rid: to_item(rid, rec, source="s", gold={}, image_root=None).document
                for rid, rec, _ in documents_of(iter_records(path))}
    return local, streamed


def _warnings_both_ways(path):
    """What the local loader warns and what the streaming reader's flags make the Ray driver say."""
    from i2cr.data import documents_of, iter_records, scattered_message

    said: list[str] = []
    load_mentions(path, strict=False, warn=said.append)
    apart = sum(scattered for _, _, scattered in documents_of(iter_records(path)))
    return said, [scattered_message(apart)] if apart else []


def _doc_record(rid, doc, mention):
    return {"id": rid, "doc_id": doc, "mention": mention, "context": "",
            "candidates": [mention]}


def test_a_file_not_grouped_by_document_reads_alike_in_every_reader_and_says_so(tmp_path):
    # d1, d2, d1: the third record's document ended when d2 began; the local loader grouped the
    # whole file (it saw 'Barbara Walters'), the Ray engine's reader did not
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in [
        _doc_record("a", "d1", "Barbara Walters"), _doc_record("b", "d2", "Kim Jones"),
        _doc_record("c", "d1", "Walters"), _doc_record("d", "d1", "ABC")]))
    local, streamed = _documents_both_ways(p)
    assert local == streamed == {"a": [], "b": [], "c": ["ABC"], "d": ["Walters"]}
    said, streamed_said = _warnings_both_ways(p)
    assert said == streamed_said and len(said) == 1
    assert said[0].startswith("2 record(s) continue a document") and "keep a document's records " \
        "together" in said[0]


def test_a_document_longer_than_the_cap_reads_alike_in_every_reader(tmp_path):
    # 600 records of one document: the Ray engine's reader cut it into runs of 500 and 100 (the
    # last records lost the first's names); locally each saw the first 500 others. Now each sees
    # the names of the document's first MAX_DOCUMENT_NAMES records, everywhere
    from i2cr.data import MAX_DOCUMENT_NAMES

    p = tmp_path / "m.json"
    p.write_text(json.dumps({f"news::d1::{i}": {"mention": f"Name {i}", "mention_context": "",
                                                "Candentity": [f"Name {i}"]} for i in range(600)}))
    local, streamed = _documents_both_ways(p)
    assert local == streamed
    first = [f"Name {i}" for i in range(MAX_DOCUMENT_NAMES)]
    assert local["news::d1::0"] == first[1:] and local["news::d1::599"] == first
    assert _warnings_both_ways(p) == ([], [])


def test_i2cr_link_warns_once_when_a_file_is_not_grouped_by_document(tmp_path, capsys):
    from i2cr.cli import main

    p = tmp_path / "m.jsonl"  # records without candidates: error records, no model is loaded
    p.write_text("".join(json.dumps({"id": rid, "mention": rid, "context": ""}) + "\n"
                         for rid in ("news::d1::0", "news::d2::0", "news::d1::1")))
    assert main(["link", str(p), "--no-progress"]) == 1
    err = capsys.readouterr().err
    warned = [x for x in err.splitlines() if "continue a document" in x]
    assert len(warned) == 1 and warned[0].startswith("i2cr: warning: 1 record(s) continue"), err


def test_document_mentions_must_be_strings(tmp_path):
    from i2cr.data import load_mentions

    p = tmp_path / "d.json"
    p.write_text(json.dumps({"x": {"mention": "A", "mention_context": "", "document_mentions": "B",
                                   "Candentity": [{"name": "A", "desc": ""}]}}))
    with pytest.raises(DataError, match="x.*document_mentions"):
        load_mentions(p)


def test_a_gold_label_names_the_same_title_however_it_is_spelled():
    """Wikipedia titles are spelled with underscores or spaces, percent-escaped or not: a gold
    label 'Justin Bieber' or 'François_Hollande' names the candidate 'Justin_Bieber' or
    'Fran%C3%A7ois_Hollande' (every figure scored such right answers as wrong)."""
    from i2cr.data import same_entity

    assert same_entity("Justin_Bieber", "Justin Bieber")
    assert same_entity("Fran%C3%A7ois_Hollande", "françois hollande ")
    assert same_entity("AT%26T", "AT&T") and same_entity("St._Louis,_Missouri", "St. Louis, Missouri")
    assert not same_entity("Justin_Bieber", "Justin_Bieber_(surname)")
    assert not same_entity("AT%26T", "AT%26T_Mobility") and not same_entity(None, "nil")


def test_a_label_pasted_with_a_direction_mark_names_its_title():
    """A label copied from a right-to-left page carries an invisible direction mark (U+200E,
    U+200F), which MediaWiki strips from a title: 'Tel Aviv\u200e' is the candidate 'Tel Aviv'
    (it was scored wrong); a name of marks or control characters alone spells nothing."""
    from i2cr.data import same_entity, title_key

    assert same_entity("Tel Aviv\u200e", "Tel_Aviv") and same_entity("\u200fTel %E2%80%8EAviv", "tel aviv")
    assert not same_entity("Tel Aviv\u200e", "Tel Aviv-Yafo")
    assert title_key("\u200e") == title_key("%E2%80%8F") == title_key("%00") == ""


def test_candidates_spelling_one_title_twice_are_one_candidate(tmp_path):
    """'Liverpool_F.C.' and 'Liverpool F.C.' (or an escaped and an unescaped title) are one
    Wikipedia article: the second is dropped as an exact repeat is, not ranked as a rival that
    splits the first's probability."""
    p = write(tmp_path, "d.json", {"d": dict(SAMPLE, Candentity=[
        "Liverpool", "Liverpool_F.C.", "Liverpool F.C.", "Fran%C3%A7ois_Hollande",
        "François_Hollande", "liverpool_f.c."])})
    [m] = load_mentions(p)
    assert [c.name for c in m.candidates] == ["Liverpool", "Liverpool_F.C.", "Fran%C3%A7ois_Hollande"]


@pytest.mark.parametrize("name", ["_", "__", "\t_ ", "%20", "%5F", "_%20_", "\u200e", "%00"])
def test_a_candidate_title_that_spells_nothing_is_refused(tmp_path, name):
    """A title made of underscores or escaped blanks names nothing, as a blank name does: the
    record is refused in one line naming the candidate (it was ranked as a candidate '')."""
    p = write(tmp_path, "d.json", {"d": dict(SAMPLE, Candentity=["Jordan", {"name": name}])})
    [e] = load_mentions(p, strict=False)
    assert isinstance(e, DataError) and "record 'd'" in str(e) and "Candentity[1]" in str(e)
    assert "no usable 'name'" in str(e)


def test_an_unreadable_label_file_is_named_once(tmp_path):
    """'i2cr: l.json: file not found', not 'i2cr: l.json: l.json: file not found': the reading
    error, which names the file already, was wrapped in a second one naming it again."""
    (tmp_path / "bad.json").write_bytes(b'{"a": "\xff"}')
    for p, why in ((tmp_path / "nope.json", "file not found"), (tmp_path, "is a folder, not a file"),
                   (tmp_path / "bad.json", "is not UTF-8 text")):
        with pytest.raises(DataError) as e:
            load_labels(p)
        assert str(e.value).startswith(f"{p}: {why}") and str(e.value).count(str(p)) == 1


def test_labels_whose_every_label_is_unusable_still_make_their_records_errors(tmp_path):
    # the CLI, eval and sft export pass load_labels' Labels: with no usable label it is an
    # empty dict, read as 'no labels', and its errors were dropped (the records were linked
    # as unlabelled, silently; the Ray engine, which keeps them, made them error records)
    from i2cr.data import LabelError

    p = write(tmp_path, "d.json", {"a": SAMPLE, "b": SAMPLE})
    gold = load_labels(write(tmp_path, "l.json", {"b": None}))
    a, b = load_mentions(p, gold, strict=False)
    assert a.label is None and isinstance(b, LabelError) and "not null" in str(b)


def test_a_gold_label_that_spells_no_title_is_an_error_of_its_record(tmp_path):
    # '_', '%20' or a direction mark is a title of nothing (data.title_key ''), refused as a
    # candidate's name: as a gold no answer could equal it (it was scored as a wrong answer,
    # unnamed, and counted by KB recall as a mention whose entity the KB lacks)
    from i2cr.data import LabelError

    p = write(tmp_path, "d.json", {k: {**SAMPLE, "label": v} for k, v in
                                   (("a", "_"), ("b", "%20"), ("c", "\u200e"), ("d", "Air_Jordan"))})
    *bad, d = load_mentions(p, strict=False)
    assert [type(b) for b in bad] == [LabelError] * 3 and d.label == "Air_Jordan"
    assert "record 'a': field 'label': gold label '_' spells no title" in str(bad[0])
    gold = load_labels(write(tmp_path, "l.json", {"x": "%20", "y": "nil"}))
    assert set(gold.errors) == {"x"} and gold == {"y": "nil"}
