"""LangChain objects in plain store.snapshot states round-trip via dumpd/load, never pickle."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402

import casstore  # noqa: E402
from casstore import codec  # noqa: E402


def _state():
    return {
        "messages": [
            SystemMessage("You are terse.", id="s0"),
            HumanMessage("What is 2+2? " * 50, id="h1", additional_kwargs={"lang": "en"}),
            AIMessage("", id="a1", tool_calls=[{"name": "calc", "args": {"expr": "2+2"}, "id": "c1"}],
                      usage_metadata={"input_tokens": 10, "output_tokens": 3, "total_tokens": 13}),
            ToolMessage("4", tool_call_id="c1", id="t1", artifact={"raw": [1, 2]}),
            AIMessage([{"type": "text", "text": "It is 4."}], id="a2", response_metadata={"model": "x"}),
        ],
        "docs": [Document(page_content="casstore stores chunks", metadata={"source": "a.md", "n": 3}, id="d1")],
        "step": 7,
    }


def test_round_trip(tmp_path):
    with casstore.open(str(tmp_path / "repo")) as store:
        state = _state()
        info = store.snapshot(state, "agent", "s")
        back = store.restore(info.id)
        assert back == state
        for a, b in zip(back["messages"], state["messages"]):
            assert type(a) is type(b)
            assert a.model_dump() == b.model_dump()
        assert isinstance(back["docs"][0], Document)
        assert back["docs"][0].metadata == {"source": "a.md", "n": 3}


def test_uses_langchain_serialization_not_pickle():
    structure, _ = codec.encode({"m": AIMessage("hi", id="x")})  # allow_pickle defaults to False
    assert b"langchain_core:Serializable" in structure
    assert b"AIMessage" in structure
    back = codec.decode(structure)
    assert back["m"] == AIMessage("hi", id="x")


def test_unchanged_messages_dedup(tmp_path):
    with casstore.open(str(tmp_path / "repo")) as store:
        msgs = [HumanMessage(f"message {i} " + "lorem ipsum dolor " * 60, id=f"m{i}") for i in range(200)]
        store.snapshot({"messages": msgs}, "agent")
        msgs.append(AIMessage("one more " * 30, id="new"))
        info = store.snapshot({"messages": msgs}, "agent")
        assert info.stored_size < info.raw_size / 20


def test_restore_in_fresh_process_autoloads(tmp_path):
    repo = str(tmp_path / "repo")
    with casstore.open(repo) as store:
        sid = store.snapshot({"m": [HumanMessage("hello", id="h")]}).id
    code = ("import sys, casstore; s = casstore.open(sys.argv[1]); "
            "assert 'langchain_core' not in sys.modules; m = s.restore(sys.argv[2])['m'][0]; "
            "print(type(m).__name__, m.content)")
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code, repo, sid], capture_output=True, text=True, timeout=60,
                         cwd=root, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["HumanMessage", "hello"]
