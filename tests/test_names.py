"""Issue 13 item 4, one name for one thing: the state, the trace and the result record name a
thing alike, and each rule (correctness against the gold, ...) lives once."""

from __future__ import annotations

from typing import get_type_hints

from conftest import CLUES, JORDAN_CANDIDATES
from fakes import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage

from i2cr.data import Candidate, Mention
from i2cr.graph import graph
from i2cr.graph.state import OutputState, State
from i2cr.linker import link_mention


def _mention(**kw):
    return Mention(id="n1", mention="Jordan", context="Jordan dunks during the 1991 NBA Finals.",
                   candidates=[Candidate(**c) for c in JORDAN_CANDIDATES], **kw)


def _script():
    return ScriptedChatModel(script=["Answer: Michael Jordan",
                                     AIMessage("", tool_calls=[tool_call("caption")]),
                                     "Answer: Michael Jordan"])


def test_rounds_is_one_name_in_state_output_and_result(settings, image_file):
    """The per-round answers are ``rounds`` in the state, the graph's output and the record."""
    assert "rounds" in get_type_hints(State) and "rounds" in get_type_hints(OutputState)
    kw = dict(icr_threshold=-1, iav_threshold=1e9, max_vif_rounds=1)
    m = _mention(image=image_file, clues=dict(CLUES))
    out = graph.invoke(m.to_input(), context=settings(_script(), **kw))
    rec = link_mention(m, settings(_script(), **kw))
    assert len(out["rounds"]) == 2 and rec["rounds"] == out["rounds"]


def test_nodes_write_only_declared_keys_and_no_unread_duplicate(settings, image_file):
    """Every key a node writes is declared in State; ICR's verdict is one key, ``icr_decision``
    (``icr_passed`` repeated it and nothing read it)."""
    kw = dict(icr_threshold=-1, iav_threshold=1e9, max_vif_rounds=1)
    m = _mention(image=image_file, clues=dict(CLUES))
    written: dict[str, set[str]] = {}
    for chunk in graph.stream(m.to_input(), context=settings(_script(), **kw),
                              stream_mode="updates"):
        for node, upd in chunk.items():
            written.setdefault(node, set()).update(upd or {})
    assert set().union(*written.values()) <= set(get_type_hints(State))
    assert "icr_decision" in written["icr"] and "icr_passed" not in written["icr"]


def test_stage_change_judges_correct_as_the_record_does():
    """The run page's stage change and the record's ``correct`` (and the metrics) use one rule:
    case and outer white space ignored. A gold label with a trailing space (labels are kept as
    written) once made a fixed answer read as merely 'changed'."""
    from i2cr.data import same_entity
    from i2cr.eval.metrics import compute
    from i2cr.trace import stage_change

    rec = {"id": "a", "gold": "Michael Jordan ", "answer": "michael jordan",
           "text_answer": "Jordan Peele", "rounds": [{"round": 1, "answer": "Jordan Peele"},
                                                     {"round": 2, "answer": "michael jordan",
                                                      "iav_passed": True}]}
    rec["correct"] = same_entity(rec["answer"], rec["gold"])
    assert rec["correct"] and stage_change(rec) == "fixed_by_vif"
    assert compute([rec])["vif_changes"]["fixed"] == 1
    broken = {**rec, "answer": "Jordan Peele", "text_answer": "MICHAEL JORDAN"}
    assert stage_change(broken) == "broken_by_vif"
    assert compute([broken])["vif_changes"]["broken"] == 1
    nil = {"id": "n", "gold": "NIL", "answer": "nil", "text_answer": "Jordan Peele"}
    assert same_entity(nil["answer"], nil["gold"]) and stage_change(nil) == "fixed_by_vif"


def test_iav_and_vifs_prompt_take_the_threshold_from_one_rule(tmp_path):
    """The threshold IAV judged by is the one VIF's prompt shows, in either mode."""
    from PIL import Image
    from test_nodes import FakeResources, prepared, run, settings

    from i2cr.graph.iav import iav, threshold_for
    from i2cr.graph.vif import vif_messages

    img = tmp_path / "i.png"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(img)
    ctx = settings(FakeResources(clip_score=33.0), iav_threshold=31.0, caption_threshold=42.0)
    for mode, extra in (("caption", {}), ("clip", {"image": str(img), "image_status": "ok"})):
        st = prepared(choice="Alpha", iav_mode=mode, rounds=[{"round": 1, "answer": "Alpha"}],
                      **extra)
        ev = run(iav, st, ctx)["events"][0]
        assert ev["threshold"] == threshold_for(ctx, mode) == {"clip": 31.0, "caption": 42.0}[mode]
        prompt = " ".join(str(m.content) for m in vif_messages({**st, "iav_score": ev["score"]},
                                                               ctx, ["ocr"]))
        assert f"(threshold {ev['threshold']:.1f})" in prompt


def test_the_context_is_cut_once_alike_for_the_state_the_queries_and_fine_tuning():
    """``max_context_chars`` cuts the context in one place (texts.cut_context): the prepare
    node's state, TES/ICR's query, the ranker's context query and the SFT prompts agree."""
    from test_nodes import prepared, run, settings

    from i2cr.graph.prepare import prepare
    from i2cr.graph.texts import round_query
    from i2cr.sft import examples_for
    from i2cr.texts import context_query, cut_context, icr_query

    ctx = settings(max_context_chars=12)
    long = "the alpha context, then much more that no query should ever see"
    up = run(prepare, {"mention": "alpha", "context": long}, ctx)
    assert up["context"] == cut_context(long, ctx) == long[:12]
    assert {"type": "context_truncated", "from_chars": len(long), "to_chars": 12} in up["events"]
    st = prepared(context=long, round=1)
    assert round_query(st, ctx) == icr_query("alpha", long[:12], [], ctx.embed_query_prefix)
    assert context_query(long, ctx) == ctx.embed_query_prefix + long[:12]
    m = Mention(id="s", mention="alpha", context=long, label="Alpha",
                candidates=[Candidate(name="Alpha", desc="about alpha"),
                            Candidate(name="Beta", desc="about beta")])
    text = str(examples_for(m, ctx))
    assert long[:12] in text and long[:13] not in text


def test_fine_tuning_finds_the_gold_by_the_rule_correct_uses():
    """A gold label with outer white space counts as correct in a record; SFT export takes it
    as the same candidate (it once refused it as 'not among its candidates')."""
    from test_nodes import settings

    from i2cr.data import same_entity
    from i2cr.sft import examples_for

    m = Mention(id="s", mention="alpha", context="the alpha context", label=" alpha ",
                candidates=[Candidate(name="Alpha", desc="about alpha"),
                            Candidate(name="Beta", desc="about beta")])
    assert same_entity("Alpha", m.label)
    exs = examples_for(m, settings())
    assert exs and exs[0].form == "round1" and "Alpha" in exs[0].answer


def test_a_fuller_name_in_the_document_that_no_candidate_is_says_the_referent_is_not_listed():
    """names.unlisted_fuller_name: 'Walters' after 'Barbara Walters' with only other Walterses as
    candidates is NIL's rule (model.nil_rule); a candidate that is the fuller name, under an
    initial, a middle name or a short given name, or that contains it, and a plain title equal to
    the mention, are each enough to leave the ranker to decide; a title is no given name."""
    from i2cr.names import unlisted_fuller_name as unlisted

    walters = ["Mark Walters", "Walters, Oklahoma", "Bucky Walters"]
    assert unlisted("Walters", walters, ["Barbara Walters", "ABC"]) == "barbara walters"
    assert unlisted("Walters'", walters, ["Barbara Walters"]) == "barbara walters"
    assert unlisted("O'Donnell", ["Chris O'Donnell"], ["Rosie O'Donnell"]) == "rosie o donnell"
    assert unlisted("Smith", ["Will Smith"], ["Richard Norton Smith"]) == "richard norton smith"
    listed = [
        ("Walters", walters + ["Barbara Walters (journalist)"], ["Barbara Walters"]),
        ("Walters", ["Barbara_Walters"], ["Barbara Walters"]),
        ("Schumer", ["Amy Schumer", "Chuck Schumer"], ["Charles Schumer"]),
        ("Nardelli", ["Robert Nardelli"], ["Bob Nardelli"]),
        ("Eliot", ["George Eliot", "T. S. Eliot"], ["Thomas Eliot"]),
        ("Bush", ["George W. Bush"], ["George Bush"]),
        ("Bush", ["George W. Bush", "Laura Bush"], ["President Bush"]),  # a title
        ("Tide", ["Alabama Crimson Tide", "Tide (brand)"], ["Crimson Tide"]),
        ("California", ["California", "Central Valley"], ["Central California"]),  # plain title
        ("Walters", walters + ["Rod Walters"], ["Barbara Walters", "Rod Walters"]),  # one listed
        ("Walters", walters, ["Walters"]),  # no fuller name
        ("Walters", walters, ["Mary Barbara Ann Walters"]),  # too long to be a given name + surname
        ("walters", walters, ["Barbara Walters"]),  # lower case: a common noun
        ("UN", ["UN (band)"], ["United Nations", "Oil UN"]),  # an acronym
        ("Las Vegas", ["Las Vegas Strip"], ["North Las Vegas"]),  # one word only
        ("Walters", walters, ["barbara Walters"]),  # not a name as written
    ]
    for mention, names, document in listed:
        assert unlisted(mention, names, document) is None, (mention, names, document)


def test_a_fuller_name_rule_reads_a_suffix_as_no_part_of_the_surname():
    """'Downey' after 'Robert Downey' is the candidate 'Robert Downey Jr.' (the rule answered NIL:
    the title ends in 'Jr.', not in the surname), and 'King' after 'Martin Luther King Jr.' is
    Martin Luther King, none of the other Kings listed (the rule did not apply)."""
    from i2cr.names import unlisted_fuller_name as unlisted

    assert unlisted("Downey", ["Robert Downey Jr.", "Downey, California"], ["Robert Downey"]) is None
    assert unlisted("Gore", ["Albert Gore Jr.", "Gore, Oklahoma"], ["Al Gore"]) is None
    assert unlisted("Griffey", ["Ken Griffey Sr.", "Ken Griffey"], ["Ken Griffey III"]) is None
    kings = ["B. B. King", "Stephen King", "King (chess)"]
    assert unlisted("King", kings, ["Martin Luther King Jr."]) == "martin luther king"
    assert unlisted("King", kings, ["Martin Luther King, Jr."]) == "martin luther king"
    assert unlisted("King", kings + ["Martin Luther King Jr."], ["Martin Luther King"]) is None


def test_a_title_anywhere_before_a_surname_is_no_given_name():
    """'Attorney General Ashcroft' is John Ashcroft: 'General' is a title as 'President' is,
    second word or first (the rule read 'Attorney General' as a given name and answered NIL)."""
    from i2cr.names import unlisted_fuller_name as unlisted

    ashcrofts = ["John Ashcroft", "Ashcroft, British Columbia"]
    for doc in ("Attorney General Ashcroft", "Defense Secretary Rumsfeld", "Ambassador Ashcroft",
                "Sheriff Ashcroft", "Speaker Ashcroft"):
        names = ashcrofts + ["Donald Rumsfeld"]
        assert unlisted(doc.split()[-1], names, [doc]) is None, doc


def test_a_candidate_whose_name_the_documents_fuller_name_contains_is_that_name():
    """A word before the candidate's name in the document ('Anchorwoman Barbara Walters',
    'H. Ross Perot', 'Richard Norton Smith' for 'Norton Smith') leaves the candidate listed (the
    rule compared only the first given words and answered NIL)."""
    from i2cr.names import unlisted_fuller_name as unlisted

    cases = [("Walters", ["Barbara Walters", "Mark Walters"], ["Anchorwoman Barbara Walters"]),
             ("Perot", ["Ross Perot", "Perot Systems"], ["H. Ross Perot"]),
             ("Fitzgerald", ["F. Scott Fitzgerald", "Ella Fitzgerald"], ["Scott Fitzgerald"]),
             ("Smith", ["Norton Smith", "Will Smith"], ["Richard Norton Smith"])]
    for mention, names, doc in cases:
        assert unlisted(mention, names, doc) is None, (mention, doc)
    assert unlisted("Walters", ["Mark Walters"], ["Anchorwoman Barbara Walters"]) is not None
    assert unlisted("Johnson", ["Lyndon B. Johnson"], ["Boris Johnson"]) == "boris johnson"


def test_a_place_named_with_a_direction_or_new_is_no_fuller_name_of_its_last_word():
    """'England' after 'New England', 'Carolina' after 'North Carolina', 'America' after 'Latin
    America' name other places: the mention is not their short form (the rule answered NIL when
    the plain place was not among the candidates)."""
    from i2cr.names import unlisted_fuller_name as unlisted

    cases = [("England", ["England national football team", "Kingdom of England"], ["New England"]),
             ("Carolina", ["Carolina Panthers", "Carolina Hurricanes"], ["North Carolina"]),
             ("America", ["United States", "Americas", "America (band)"], ["Latin America"]),
             ("Mexico", ["Mexico national football team", "Mexico City"], ["New Mexico"]),
             ("Korea", ["Korean Peninsula", "Korea (band)"], ["South Korea"]),
             ("Germany", ["Nazi Germany", "Germany national football team"], ["East Germany"]),
             ("Ireland", ["Republic of Ireland", "Ireland (band)"], ["Northern Ireland"])]
    for mention, names, doc in cases:
        assert unlisted(mention, names, doc) is None, (mention, doc)


def test_a_candidate_titled_family_name_first_is_the_fuller_name():
    """A knowledge base that writes 'Walters, Barbara' lists Barbara Walters (the rule read
    'Barbara' as a place qualifier, like 'Walters, Oklahoma', and answered NIL); 'Xi Jinping' is
    the 'Jinping Xi' of a text in Western order."""
    from i2cr.names import unlisted_fuller_name as unlisted

    assert unlisted("Walters", ["Walters, Barbara", "Walters, Mark"], ["Barbara Walters"]) is None
    assert unlisted("Walters", ["Walters, Oklahoma", "Walters, Mark"],
                    ["Barbara Walters"]) == "barbara walters"
    # a title in family-name-first order, without a comma, as Chinese and Hungarian names are
    assert unlisted("Xi", ["Xi Jinping", "Xi River"], ["Jinping Xi"]) is None
    assert unlisted("Orb\u00e1n", ["Orb\u00e1n Viktor"], ["Viktor Orb\u00e1n"]) is None


def test_candidates_that_do_not_bear_the_mentions_name_say_nothing_of_it():
    """The rule's ground is that the candidates are other bearers of the name; a candidate list
    in another script ('Путин' after 'Владимир Путин', candidates in Latin letters) or found by
    other means bears none, and the fuller name cannot be compared with them (the rule answered
    NIL beside 'Vladimir Putin')."""
    from i2cr.names import unlisted_fuller_name as unlisted

    assert unlisted("Путин", ["Vladimir Putin", "Putin (film)"], ["Владимир Путин"]) is None
    assert unlisted("Bolt", ["Lightning (sprinter)"], ["Usain Bolt"]) is None
    assert unlisted("Путин", ["Путин (фильм)"], ["Владимир Путин"]) == "владимир путин"


def test_spelling_variants_of_a_given_name_are_one_name():
    """'Stephen' and 'Steven', 'Mohammed' and 'Muhammad' are spellings of one name (nicknames.tsv);
    'Jonathon', 'Phillip', 'Katharine', 'Sergei' are one letter from 'Jonathan', 'Philip',
    'Katherine', 'Sergey': a text that spells the candidate's given name so names the candidate
    (the rule answered NIL). Names that only share a short form ('Al': Albert, Alfred) are not
    one."""
    from i2cr.names import same_given_name, unlisted_fuller_name as unlisted

    for doc, cand in [("Stephen Spielberg", "Steven Spielberg"), ("Jonathon Walters", "Jonathan Walters"),
                      ("Phillip Morris", "Philip Morris"), ("Katharine Hepburn", "Katherine Hepburn"),
                      ("Sergei Brin", "Sergey Brin"), ("Kathryn Bigelow", "Kathy Bigelow")]:
        sur = doc.split()[-1]
        assert unlisted(sur, [cand, f"{sur}, Texas"], [doc]) is None, doc
    for a, b in [("mark", "mary"), ("dan", "don"), ("barbara", "mark"), ("john", "jon"),
                 ("albert", "alfred"), ("harold", "henry"), ("catherine", "kathleen")]:
        assert not same_given_name(a, b), (a, b)  # the last three share a short form, no more
    assert unlisted("Walters", ["Albert Walters"], ["Alfred Walters"]) == "alfred walters"
    assert unlisted("Sadr", ["Muhammad Sadr"], ["Mohammed Sadr"]) is None


def test_a_quoted_or_bracketed_name_is_read_as_the_name():
    """'"Walters"' and '(Barbara Walters)' are the name inside (the candidate lookup reads them
    so, names.mention_forms); the rule read the quote as a first letter that is no capital."""
    from i2cr.names import unlisted_fuller_name as unlisted

    walters = ["Mark Walters", "Walters, Oklahoma"]
    for mention, doc in [('"Walters"', "Barbara Walters"), ("Walters", '"Barbara Walters"'),
                         ("\u201cWalters\u201d", "(Barbara Walters)"), ("(Walters)", "Barbara Walters,")]:
        assert unlisted(mention, walters, [doc]) == "barbara walters", (mention, doc)


def test_a_document_that_names_a_candidate_called_by_the_mention_leaves_it_open():
    """'Washington' in a document naming both 'Denzel Washington' and 'Washington, D.C.' may be
    the city, a candidate: the document gives the mention two readings (the rule answered NIL,
    the city's title having a qualifier)."""
    from i2cr.names import unlisted_fuller_name as unlisted

    names = ["George Washington", "Washington, D.C.", "Washington (state)"]
    assert unlisted("Washington", names, ["Denzel Washington", "Washington, D.C."]) is None
    assert unlisted("Washington", names, ["Denzel Washington", "Washington state"]) is None
    assert unlisted("Washington", names, ["Denzel Washington"]) == "denzel washington"


def test_the_fuller_name_rule_reads_names_not_texts_of_any_length():
    """A mention or a document entry longer than a name (10,000 characters) is no name: the rule
    neither applies to it nor quotes it back in the trace (it named a 10,008-character 'fuller
    name' in the NIL reason), and a hostile document of them costs no more than a short one."""
    from i2cr.names import unlisted_fuller_name as unlisted

    long = "W" + "a" * 9_999
    assert unlisted(long, ["Mark Walters"], ["Barbara " + long]) is None
    assert unlisted("Walters", ["Mark Walters"], ["Barbara " + "x" * 10_000 + " Walters"]) is None
    noise = [f"Name{i} " + "y" * 5_000 for i in range(600)] + [None, 7, ["Barbara Walters"]]
    assert unlisted("Walters", ["Mark Walters"], noise + ["Barbara Walters"]) is None  # capped
    assert unlisted("Walters", ["Mark Walters"], ["Barbara Walters"] + noise) == "barbara walters"


def test_the_caches_keyed_by_a_document_hold_a_bounded_amount_of_text():
    """names._expansions and names._unlisted_fuller_name are cached on their document: a served
    API's distinct documents, each up to MAX_DOCUMENT_NAMES names of MAX_NAME_CHARS, stay held
    until evicted (8192 of them held 1.2 GB of text); and they still answer from the cache when the
    ranker asks again in the next round."""
    from i2cr.data import MAX_NAME_CHARS
    from i2cr.names import (
        MAX_DOCUMENT_NAMES,
        _expansions,
        _unlisted_fuller_name,
        expansions,
        unlisted_fuller_name as unlisted,
    )

    for cached in (_expansions, _unlisted_fuller_name):
        size = cached.cache_info().maxsize
        assert size and size * MAX_DOCUMENT_NAMES * MAX_NAME_CHARS <= 100_000_000, cached
    doc = ["Barbara Walters", "Mark Twain"]
    hits = (_expansions.cache_info().hits, _unlisted_fuller_name.cache_info().hits)
    for _ in range(2):
        expansions("Walters", doc), unlisted("Walters", ["Mark Walters"], doc)
    assert _expansions.cache_info().hits > hits[0] and _unlisted_fuller_name.cache_info().hits > hits[1]


def test_a_document_naming_a_bearer_otherwise_than_in_full_leaves_the_surname_open():
    """'Bush' in a document naming 'Laura Bush' and 'President Bush' may be George W. Bush, a
    candidate; 'Jordan' beside 'Vernon Jordan' and 'Kingdom of Jordan' may be the kingdom, a
    candidate the document names (the rule skipped the titled form and the longer title, and
    answered NIL). A courtesy title ('Ms. Walters') names the same person as the fuller name."""
    from i2cr.names import unlisted_fuller_name as unlisted

    bushes = ["George W. Bush", "Bush (band)"]
    assert unlisted("Bush", bushes, ["Laura Bush"]) == "laura bush"
    assert unlisted("Bush", bushes, ["Laura Bush", "President Bush"]) is None
    assert unlisted("Bush", bushes, ["Laura Bush", "Former President George W. Bush"]) is None
    assert unlisted("Jordan", ["Michael Jordan", "Kingdom of Jordan"],
                    ["Vernon Jordan", "Kingdom of Jordan"]) is None
    assert unlisted("Walters", ["Mark Walters"], ["Barbara Walters", "Ms. Walters"]) == "barbara walters"


def test_spanish_and_portuguese_place_names_are_no_given_name_and_surname():
    """'Barbara' after 'Santa Barbara', 'Diego' after 'San Diego', 'Paulo' after 'São Paulo' are
    people's given names, not short forms of the places (the rule answered NIL beside 'Barbara
    Bush', 'Diego Maradona')."""
    from i2cr.names import unlisted_fuller_name as unlisted

    for mention, names, doc in [("Barbara", ["Barbara Bush", "Barbara (film)"], "Santa Barbara"),
                                ("Diego", ["Diego Maradona", "Diego (name)"], "San Diego"),
                                ("Paulo", ["Paulo Coelho"], "S\u00e3o Paulo"),
                                ("Salvador", ["Salvador Dal\u00ed", "Salvador, Bahia"], "El Salvador"),
                                ("Rico", ["Rico (singer)"], "Puerto Rico")]:
        assert unlisted(mention, names, [doc]) is None, doc


def test_a_hyphenated_compound_is_no_given_name_and_surname():
    """'Hungary' after 'Austria-Hungary', 'Bissau' after 'Guinea-Bissau', 'Benz' after
    'Mercedes-Benz', 'Jones' after 'Catherine Zeta-Jones': the mention is a part of one word, not
    a surname of its own (the rule answered NIL beside the places and people of that name).
    A hyphenated given name or surname of its own still counts."""
    from i2cr.names import unlisted_fuller_name as unlisted

    for mention, names, doc in [("Hungary", ["Kingdom of Hungary", "Hungary national football team"],
                                 "Austria-Hungary"),
                                ("Bissau", ["Bissau (region)", "Bissau Airport"], "Guinea-Bissau"),
                                ("Benz", ["Karl Benz", "Benz (surname)"], "Mercedes-Benz"),
                                ("Jones", ["Tom Jones", "Jones, Oklahoma"], "Catherine Zeta-Jones")]:
        assert unlisted(mention, names, [doc]) is None, doc
    assert unlisted("Sartre", ["Sartre (film)"], ["Jean-Paul Sartre"]) == "jean paul sartre"
    assert unlisted("Zeta-Jones", ["Zeta-Jones (film)"], ["Catherine Zeta-Jones"]) == "catherine zeta jones"
