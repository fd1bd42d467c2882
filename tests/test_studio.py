"""LangGraph Studio: the graph's input/output JSON schemas, and ``langgraph dev`` (the
``langgraph-cli[inmem]`` server Studio talks to) driven by the official ``langgraph-sdk`` client."""

from __future__ import annotations

import pytest
from servers import langgraph_dev

from i2cr.graph import graph
from i2cr.linker import link

INPUT_FIELDS = {"mention", "context", "image", "candidates", "precomputed_clues", "allow_nil"}
OUTPUT_FIELDS = {"answer", "is_nil", "final_reason", "path", "clues", "tools_used", "events"}


def test_input_and_output_json_schemas_name_the_fields():
    ins, outs = graph.get_input_jsonschema(), graph.get_output_jsonschema()
    assert ins and outs
    assert INPUT_FIELDS <= set(ins["properties"])
    assert OUTPUT_FIELDS <= set(outs["properties"])
    cand = ins["properties"]["candidates"]["items"]
    cand = ins.get("$defs", {}).get(cand["$ref"].rsplit("/", 1)[-1], cand) if "$ref" in cand else cand
    assert {"name", "desc"} <= set(cand["properties"])
    assert "tes_strategy" in graph.get_context_jsonschema()["properties"]


# --- langgraph dev --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """``langgraph dev`` (no API keys: auth off) for this module; see ``servers.langgraph_dev``."""
    with langgraph_dev(tmp_path_factory.mktemp("langgraph-dev"), {"I2CR_API_KEYS": ""}) as srv:
        yield srv.url


MENTION = {
    "mention": "Jordan",
    "context": "Jordan dunks during the 1991 NBA Finals.",
    "candidates": [
        {"name": "Jordan Peele", "desc": "Name: Jordan Peele. Occupation: film director, comedian."},
        {"name": "Michael Jordan", "desc": "Name: Michael Jordan. Occupation: basketball player. "
         "Team: Chicago Bulls."},
        {"name": "Jordan", "desc": "Jordan is a country in Western Asia."},
    ],
    "precomputed_clues": {"OCR text": "CHICAGO BULLS 23", "Caption": "a basketball player dunking",
                          "Tags": "basketball; sport; arena"},
}
# Retrieval TES (no LLM); IAV never passes, so VIF runs the two offered tools and records a
# tool_call event for each. Not the defaults (which would offer ocr first): the server must
# honour the context.
SETTINGS = {"tes_strategy": "retrieval", "tools": "caption,tags", "tool_backend": "precomputed",
            "caption_threshold": 1e9, "clue_cache": "none"}


@pytest.mark.integration
def test_langgraph_dev_serves_the_graph_to_the_sdk_with_schemas(dev_server):
    from langgraph_sdk import get_sync_client

    local = link(MENTION["mention"], MENTION["context"], MENTION["candidates"],
                 clues=MENTION["precomputed_clues"], **SETTINGS)
    assert local["error"] is None and local["tools_used"] == ["caption", "tags"]

    client = get_sync_client(url=dev_server)
    assistants = client.assistants.search(graph_id="i2cr")
    assert assistants, "langgraph dev serves no assistant for the graph 'i2cr'"
    aid = assistants[0]["assistant_id"]

    schemas = client.assistants.get_schemas(aid)
    assert schemas["input_schema"] and schemas["output_schema"], schemas
    assert INPUT_FIELDS <= set(schemas["input_schema"]["properties"])
    assert OUTPUT_FIELDS <= set(schemas["output_schema"]["properties"])
    assert "tes_strategy" in schemas["context_schema"]["properties"]

    thread = client.threads.create()
    out = client.runs.wait(thread["thread_id"], aid, input=MENTION, context=SETTINGS)
    assert out["answer"] == local["answer"]
    assert out["tools_used"] == local["tools_used"] and out["path"] == local["path"]
    assert [c["text"] for c in out["clues"]] == [c["text"] for c in local["clues"]]

    thread = client.threads.create()  # the graph's name works as the assistant id too
    parts = list(client.runs.stream(thread["thread_id"], "i2cr", input=MENTION, context=SETTINGS,
                                    stream_mode=["updates"]))
    updates = [p.data for p in parts if p.event == "updates"]
    live = [e for u in updates for upd in u.values() for e in (upd or {}).get("events") or []]
    assert [n for u in updates for n in u] == local["path"]  # one update per node visit
    final = next(u["final"] for u in updates if "final" in u)
    assert final["answer"] == local["answer"]
    assert [(e["tool"], e["result"]) for e in live if e.get("type") == "tool_call"] == \
        [(c["tool"], c["text"]) for c in local["clues"]]
