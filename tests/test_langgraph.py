"""CasstoreSaver: LangGraph's conformance suite, and a real chat graph run on it."""

import asyncio
import os
import random
import time

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("langgraph.checkpoint.conformance")

from langchain_core.messages import AIMessage, HumanMessage, ToolMessage  # noqa: E402
from langgraph.checkpoint.conformance import checkpointer_test, validate  # noqa: E402
from langgraph.graph import END, START, MessagesState, StateGraph  # noqa: E402

import casstore  # noqa: E402
from casstore.integrations.langgraph import CasstoreSaver  # noqa: E402

WORDS = "alpha beta gamma delta agent tool store chunk graph node state message reply plan step".split()


def _text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi) // 6))


def _dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def test_conformance(tmp_path):
    counter = iter(range(1000))

    @checkpointer_test(name="CasstoreSaver")
    async def factory():
        with CasstoreSaver.from_url(str(tmp_path / f"repo{next(counter)}")) as saver:
            yield saver

    report = asyncio.run(validate(factory))
    report.print_report()
    assert report.passed_all_base()
    results = {name: r.passed for name, r in report.results.items()}
    assert results == {name: True for name in results}, results
    assert {"copy_thread", "prune", "delete_for_runs"} <= set(results)


def _graph(saver, **compile_kwargs):
    def agent(state):
        msgs = state["messages"]
        rng = random.Random(len(msgs))
        if msgs[-1].type == "human" and len(msgs) % 4 == 1:
            call = {"name": "search", "args": {"q": _text(rng, 20, 40)}, "id": f"call-{len(msgs)}"}
            return {"messages": [AIMessage(_text(rng, 100, 300), tool_calls=[call], id=f"ai-{len(msgs)}")]}
        return {"messages": [AIMessage(_text(rng, 200, 1500), id=f"ai-{len(msgs)}")]}

    def tools(state):
        last = state["messages"][-1]
        rng = random.Random(-len(state["messages"]))
        return {"messages": [ToolMessage(_text(rng, 2000, 5000), tool_call_id=c["id"], id=f"tool-{c['id']}")
                             for c in last.tool_calls]}

    g = StateGraph(MessagesState)
    g.add_node("agent", agent)
    g.add_node("tools", tools)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", lambda s: "tools" if s["messages"][-1].tool_calls else END, ["tools", END])
    g.add_edge("tools", "agent")
    return g.compile(checkpointer=saver, **compile_kwargs)


def _human(turn):
    return HumanMessage(_text(random.Random(f"h{turn}"), 200, 1500), id=f"human-{turn}")


def _turns(saver, config, turns):
    graph = _graph(saver)
    for turn in range(turns):
        graph.invoke({"messages": [_human(turn)]}, config)


def test_chat_graph_history_resume_time_travel_fork(tmp_path):
    repo = str(tmp_path / "repo")
    store = casstore.open(repo)
    saver = CasstoreSaver(store, writes_linger=1)  # task writes wait for the next checkpoint even on a loaded machine
    graph = _graph(saver, interrupt_before=["tools"])
    config = {"configurable": {"thread_id": "chat-1"}}
    turns, interrupts = 50, 0
    for t in range(turns):
        graph.invoke({"messages": [_human(t)]}, config)
        snap = graph.get_state(config)
        if snap.next == ("tools",):  # interrupted before the tool: resume it
            interrupts += 1
            graph.invoke(None, config)
    assert interrupts >= 10
    state = graph.get_state(config)
    msgs = state.values["messages"]
    assert state.next == ()
    assert len(msgs) == 2 * turns + 2 * interrupts
    assert [m.id for m in msgs if m.type == "human"] == [f"human-{t}" for t in range(turns)]

    # history: newest first, parent links, every checkpoint loadable
    history = list(graph.get_state_history(config))
    ids = [h.config["configurable"]["checkpoint_id"] for h in history]
    assert ids == sorted(ids, reverse=True)
    assert all(h.parent_config["configurable"]["checkpoint_id"] == ids[i + 1]
               for i, h in enumerate(history[:-1]))
    assert history[0].values["messages"] == msgs

    # a second saver over the same store (no shared cache) sees the same thread
    other = _graph(CasstoreSaver(store))
    assert other.get_state(config).values["messages"] == msgs

    # the thread shows up as a casstore lineage; the tasks' writes rode in the checkpoints after them
    infos = store.list("langgraph:chat-1")
    assert {i.session_id for i in infos} == {"default"}
    assert sum(1 for i in infos if i.metadata.get("writes")) >= turns

    # dedup: stored bytes far below the sum of the checkpoints' sizes
    raw = sum(i.raw_size for i in store.list("langgraph:chat-1", "default"))
    stored = _dir_bytes(repo)
    assert stored * 10 < raw, (stored, raw)

    # update_state: replace the last AI message by id
    last_ai = msgs[-1]
    graph.update_state(config, {"messages": [AIMessage("edited answer", id=last_ai.id)]})
    edited = graph.get_state(config).values["messages"]
    assert len(edited) == len(msgs) and edited[-1].content == "edited answer"

    # time travel: fork from an early checkpoint (after turn 2 finished)
    early = next(h for h in reversed(history)
                 if h.next == () and len(h.values.get("messages", [])) == 4)
    early_msgs = early.values["messages"]
    forked = graph.invoke({"messages": [HumanMessage("a different question", id="fork-q")]}, early.config)
    fmsgs = forked["messages"]
    assert fmsgs[:4] == early_msgs and fmsgs[4].id == "fork-q" and fmsgs[5].type == "ai"
    assert len(fmsgs) == 6
    head = graph.get_state(config)  # the fork is now the thread's latest checkpoint
    assert head.values["messages"] == fmsgs
    # the original branch is still there, by checkpoint id
    assert graph.get_state(history[0].config).values["messages"] == msgs
    # replaying an old checkpoint (no new input) leaves it loadable and unchanged
    assert graph.get_state(early.config).values["messages"] == early_msgs

    # delete_thread removes every snapshot of the thread
    saver.delete_thread("chat-1")
    assert store.list("langgraph:chat-1") == []
    assert graph.get_state(config).values == {}
    store.close()


async def _async_chat(saver, thread_id, turns):
    """The chat graph on saver, run asynchronously for turns turns on one thread: (graph, config)."""
    graph = _graph(saver)
    config = {"configurable": {"thread_id": thread_id}}
    for t in range(turns):
        await graph.ainvoke({"messages": [_human(t)]}, config)
    return graph, config


def test_async_graph_and_copy_thread(tmp_path):
    async def main():
        async with CasstoreSaver.from_url(str(tmp_path / "repo")) as saver:
            graph, config = await _async_chat(saver, "a", 6)
            state = await graph.aget_state(config)
            n = len(state.values["messages"])
            await saver.acopy_thread("a", "b")
            copied = await graph.aget_state({"configurable": {"thread_id": "b"}})
            assert copied.values["messages"] == state.values["messages"]
            await graph.ainvoke({"messages": [_human(99)]}, {"configurable": {"thread_id": "b"}})
            assert len((await graph.aget_state(config)).values["messages"]) == n
            hist = [h async for h in graph.aget_state_history(config, limit=3)]
            assert len(hist) == 3
            await saver.aprune(["a"], strategy="keep_latest")
            assert len([h async for h in saver.alist(config)]) == 1
            assert (await graph.aget_state(config)).values["messages"] == state.values["messages"]

    asyncio.run(main())


def test_checkpoints_share_message_bytes(tmp_path):
    """Appending one message stores about that message, not the whole list again."""
    with CasstoreSaver.from_url(str(tmp_path / "repo")) as saver:
        graph = _graph(saver)
        config = {"configurable": {"thread_id": "t"}}
        for t in range(20):
            graph.invoke({"messages": [_human(t)]}, config)
        infos = [i for i in saver.store.list("langgraph:t", "default")]
        late = infos[-10:]
        assert all(i.raw_size > 20_000 for i in late)
        assert all(i.stored_size < i.raw_size / 8 for i in late), [(i.raw_size, i.stored_size) for i in late]


def test_saver_caches_are_exact_and_bounded(tmp_path):
    """Reads served from the state cache equal reads from storage; the cache respects its bound;
    a reloaded checkpoint's messages are not serialized again by the next put."""
    repo = str(tmp_path / "repo")
    with CasstoreSaver.from_url(repo, state_cache_bytes=200_000) as saver:
        graph = _graph(saver)
        config = {"configurable": {"thread_id": "t"}}
        for t in range(12):
            graph.invoke({"messages": [_human(t)]}, config)
        assert 0 < saver._states.used <= 200_000
        warm = [(c.checkpoint, c.metadata, c.pending_writes) for c in saver.list(config)]

        dumped = []
        real = saver.serde.dumps_typed
        saver.serde.dumps_typed = lambda obj: dumped.append(obj) or real(obj)
        loaded = saver.get_tuple(config)
        saver.put(config, {**loaded.checkpoint, "id": "ffffffff-0000-6000-8000-000000000000"},
                  {"source": "update", "step": 99, "parents": {}}, {})
        saver.serde.dumps_typed = real
        assert not [o for o in dumped if getattr(o, "type", None) in ("human", "ai")], dumped
    with CasstoreSaver.from_url(repo) as cold:
        tuples = [c for c in cold.list(config) if c.checkpoint["id"] != "ffffffff-0000-6000-8000-000000000000"]
        assert [(c.checkpoint, c.metadata, c.pending_writes) for c in tuples] == warm


def test_put_reuses_only_messages_that_did_not_change(tmp_path):
    """A put serializes again the messages edited in place since the last put (even to content of
    the same length, or a new id), and the elements a caller appended to a loaded list in place;
    the unchanged ones it does not serialize again."""
    def put(saver, config, msgs, n):
        checkpoint = {"v": 1, "id": f"1ef00000-0000-6000-8000-{n:012d}", "ts": "2026-12-03T00:00:00+00:00",
                      "channel_values": {"messages": msgs}, "channel_versions": {"messages": n},
                      "versions_seen": {}, "updated_channels": None}
        return saver.put(config, checkpoint, {"source": "loop", "step": n, "parents": {}}, {"messages": n})

    with CasstoreSaver.from_url(str(tmp_path / "repo")) as saver:
        dumped = []
        real = saver.serde.dumps_typed
        saver.serde.dumps_typed = lambda obj: dumped.append(obj) or real(obj)
        config = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
        msgs = [HumanMessage(f"message {i:03d} " + "x" * 50, id=f"m{i}") for i in range(30)]
        config = put(saver, config, msgs, 1)
        dumped.clear()
        msgs[5].content = msgs[5].content.upper()            # same length, other text
        msgs[9].id = "renamed"
        config = put(saver, config, msgs + [AIMessage("new reply", id="a1")], 2)
        assert [m.id for m in dumped if hasattr(m, "content")] == ["m5", "renamed", "a1"]

        loaded = saver.get_tuple(config).checkpoint["channel_values"]["messages"]
        loaded.append(HumanMessage("appended in place", id="h2"))
        dumped.clear()
        config = put(saver, config, loaded, 3)
        assert [m.id for m in dumped if hasattr(m, "content")] == ["h2"]
        saver._states.clear()
        stored = saver.get_tuple(config).checkpoint["channel_values"]["messages"]
        assert [(m.id, m.content) for m in stored] == [(m.id, m.content) for m in loaded]
        assert stored[5].content == ("message 005 " + "x" * 50).upper() and stored[9].id == "renamed"


def test_concurrent_writes_are_group_committed(tmp_path):
    """put_writes calls that arrive while another snapshot is being written share one snapshot,
    and each returns only once its writes are stored."""
    import threading
    import time

    from langgraph.checkpoint.base import empty_checkpoint

    repo = str(tmp_path / "repo")
    with CasstoreSaver.from_url(repo) as saver:
        cfg = saver.put({"configurable": {"thread_id": "g", "checkpoint_ns": ""}}, empty_checkpoint(),
                        {"source": "input", "step": -1, "parents": {}}, {})
        real, inside, gate = saver.store.snapshot, threading.Event(), threading.Event()

        def slow(*args, **kwargs):
            inside.set()
            gate.wait(10)
            return real(*args, **kwargs)

        saver.store.snapshot = slow
        writers = [threading.Thread(target=saver.put_writes, args=(cfg, [("ch", f"value {i}")], f"task-{i}"))
                   for i in range(8)]
        writers[0].start()
        assert inside.wait(10)  # the first writer holds its snapshot; the others queue behind it
        for w in writers[1:]:
            w.start()
        deadline = time.monotonic() + 10
        while len(saver._queue) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(saver._queue) == 7
        gate.set()
        for w in writers:
            w.join(10)
        saver.store.snapshot = real
        writes = [i for i in saver.store.list("langgraph:g") if i.metadata.get("langgraph") == "writes"]
        assert len(writes) == 2, [i.metadata for i in writes]
        got = sorted(v for _, _, v in saver.get_tuple(cfg).pending_writes)
        assert got == [f"value {i}" for i in range(8)]
    with CasstoreSaver.from_url(repo) as fresh:
        assert sorted(v for _, _, v in fresh.get_tuple(cfg).pending_writes) == got


def test_reads_format_1_writes(tmp_path):
    """Pending writes stored by the first saver format (one snapshot per call, rows without a
    checkpoint id, thread id in the metadata) are still read."""
    from langgraph.checkpoint.base import empty_checkpoint

    with CasstoreSaver.from_url(str(tmp_path / "repo")) as saver:
        cfg = saver.put({"configurable": {"thread_id": "old", "checkpoint_ns": ""}}, empty_checkpoint(),
                        {"source": "input", "step": -1, "parents": {}}, {})
        cid = cfg["configurable"]["checkpoint_id"]
        typed, data = saver.serde.dumps_typed("legacy value")
        saver.store.snapshot({"format": 1, "writes": [["task-1", "ch", 0, "", typed.encode() + b"\0" + data]]},
                             "langgraph:old", "default#writes",
                             metadata={"langgraph": "writes", "thread_id": "old", "checkpoint_ns": "",
                                       "checkpoint_id": cid, "task_id": "task-1", "keys": [0]})
        saver.refresh()
        assert saver.get_tuple(cfg).pending_writes == [("task-1", "ch", "legacy value")]
        saver.put_writes(cfg, [("ch", "ignored: same task and index")], "task-1")
        saver.put_writes(cfg, [("ch", "new value")], "task-2")
        assert saver.get_tuple(cfg).pending_writes == [("task-1", "ch", "legacy value"), ("task-2", "ch", "new value")]


def _writes_riding(saver, cfg, writes, task_id):
    """put_writes on a thread of its own: it waits for the next checkpoint to carry its rows."""
    import threading

    t = threading.Thread(target=saver.put_writes, args=(cfg, writes, task_id))
    t.start()
    deadline = time.monotonic() + 10
    while not saver._queue and time.monotonic() < deadline:
        time.sleep(0.005)
    assert saver._queue
    return t


def test_writes_ride_in_the_next_checkpoint_and_survive_its_deletion(tmp_path):
    """A step's writes are stored by the next checkpoint's snapshot (put_writes returns then, long
    before its linger); deleting that checkpoint (delete_for_runs) stores them again first."""
    from langgraph.checkpoint.base import empty_checkpoint

    repo = str(tmp_path / "repo")
    with CasstoreSaver.from_url(repo, writes_linger=60) as saver:
        base = {"configurable": {"thread_id": "w", "checkpoint_ns": ""}}
        c1 = {**empty_checkpoint(), "id": "1ef00000-0000-6000-8000-000000000001"}
        cfg1 = saver.put(base, c1, {"source": "loop", "step": 0, "parents": {}, "run_id": "run-a"}, {})
        writer = _writes_riding(saver, cfg1, [("answer", "from task 1"), ("other", 2)], "task-1")
        c2 = {**empty_checkpoint(), "id": "1ef00000-0000-6000-8000-000000000002"}
        cfg2 = saver.put(cfg1, c2, {"source": "loop", "step": 1, "parents": {}, "run_id": "run-b"}, {})
        writer.join(10)
        assert not writer.is_alive()
        infos = saver.store.list("langgraph:w")
        assert len(infos) == 2 and infos[1].metadata["writes"] == [[c1["id"], "task-1", [0, 1]]]
        want = [("task-1", "answer", "from task 1"), ("task-1", "other", 2)]
        assert saver.get_tuple(cfg1).pending_writes == want
        assert saver.get_tuple(cfg2).pending_writes == []

        saver.delete_for_runs(["run-b"])  # checkpoint 2 goes; the writes of checkpoint 1 it carried stay
        assert saver.get_tuple(cfg2) is None
        assert saver.get_tuple(cfg1).pending_writes == want
    with CasstoreSaver.from_url(repo) as fresh:
        assert [t.checkpoint["id"] for t in fresh.list(base)] == [c1["id"]]
        assert fresh.get_tuple(cfg1).pending_writes == want


def test_prune_keeps_the_latest_checkpoint_that_carries_older_writes(tmp_path):
    from langgraph.checkpoint.base import empty_checkpoint

    with CasstoreSaver.from_url(str(tmp_path / "repo"), writes_linger=60) as saver:
        cfg = {"configurable": {"thread_id": "p", "checkpoint_ns": ""}}
        for i in range(1, 4):
            ck = {**empty_checkpoint(), "id": f"1ef00000-0000-6000-8000-00000000000{i}"}
            writer = _writes_riding(saver, cfg, [("x", i)], f"task-{i}") if i > 1 else None
            cfg = saver.put(cfg, ck, {"source": "loop", "step": i, "parents": {}}, {})
            if writer:
                writer.join(10)
        saver.prune(["p"])
        saver.prune(["p"])  # the kept checkpoint carries writes of a pruned one: it must stay
        left = list(saver.list({"configurable": {"thread_id": "p"}}))
        assert [t.checkpoint["id"] for t in left] == [cfg["configurable"]["checkpoint_id"]]
        assert len(saver.store.list("langgraph:p")) == 1


def test_written_messages_are_stored_as_references_into_the_next_checkpoint(tmp_path):
    """A message a task wrote, which the next checkpoint's list holds, is stored once: the write
    keeps its index in that list. Empty and non-list values keep their place among the rows."""
    from langgraph.checkpoint.base import empty_checkpoint

    repo = str(tmp_path / "repo")
    msgs = [HumanMessage(f"question {i} " + "q" * 300, id=f"h{i}") for i in range(3)]
    reply = AIMessage("short reply", id="ai-1")
    with CasstoreSaver.from_url(repo, writes_linger=60) as saver:
        base = {"configurable": {"thread_id": "r", "checkpoint_ns": ""}}
        c1 = {**empty_checkpoint(), "id": "1ef00000-0000-6000-8000-000000000001",
              "channel_values": {"messages": msgs}}
        cfg1 = saver.put(base, c1, {"source": "loop", "step": 0, "parents": {}}, {})
        writer = _writes_riding(saver, cfg1, [("messages", [reply]), ("empty", []), ("flag", 3)], "task-1")
        c2 = {**empty_checkpoint(), "id": "1ef00000-0000-6000-8000-000000000002",
              "channel_values": {"messages": msgs + [reply]}}
        saver.put(cfg1, c2, {"source": "loop", "step": 1, "parents": {}}, {})
        writer.join(10)
        stored = saver.store.restore(saver.store.list("langgraph:r")[-1].id)
        assert stored["items"] == [3, stored["items"][1]] and isinstance(stored["items"][1], bytes)
        assert [r[5] for r in stored["rows"]] == [1, 0, -1]
    with CasstoreSaver.from_url(repo) as fresh:
        writes = fresh.get_tuple(cfg1).pending_writes
        assert writes == [("task-1", "messages", [reply]), ("task-1", "empty", []), ("task-1", "flag", 3)]


def test_pending_writes_seen_after_a_read_follow_later_writes(tmp_path):
    """A checkpoint read once, then written to again (a resumed task, another task) and then
    deleted: each read shows exactly the writes stored at that moment, in LangGraph's order."""
    from langgraph.checkpoint.base import empty_checkpoint

    with CasstoreSaver.from_url(str(tmp_path / "repo"), writes_linger=0) as saver:
        cfg = saver.put({"configurable": {"thread_id": "t", "checkpoint_ns": ""}}, empty_checkpoint(),
                        {"source": "input", "step": -1}, {})
        saver.put_writes(cfg, [("messages", [AIMessage("first", id="a1")]), ("branch:agent", None)], "task-b")
        first = saver.get_tuple(cfg).pending_writes
        assert [(t, c) for t, c, _ in first] == [("task-b", "messages"), ("task-b", "branch:agent")]
        assert first[0][2][0].content == "first" and first[1][2] is None

        saver.put_writes(cfg, [("messages", [HumanMessage("second", id="h2")])], "task-a")
        second = saver.get_tuple(cfg).pending_writes
        assert [(t, c) for t, c, _ in second] == [("task-a", "messages"), ("task-b", "messages"),
                                                  ("task-b", "branch:agent")]
        assert second[0][2][0].content == "second"
        assert saver.get_tuple(cfg).pending_writes == second   # read twice: the same rows

        saver.delete_thread("t")
        assert saver.get_tuple(cfg) is None
        saver.put(cfg, empty_checkpoint() | {"id": cfg["configurable"]["checkpoint_id"]},
                  {"source": "input", "step": -1}, {})
        assert saver.get_tuple(cfg).pending_writes == []



def _run_beside(loops, main):
    """Run each of loops over and over on a thread of its own while main() runs here, with thread
    switches as frequent as Python allows (to hit a race if there is one); return what they raised."""
    import sys
    import threading

    errors, stop = [], threading.Event()

    def run(fn):
        try:
            while not stop.is_set():
                fn()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            errors.append(repr(exc))

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=run, args=(fn,)) for fn in loops]
    try:
        for t in threads:
            t.start()
        main()
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(old_interval)
    return errors


def test_reads_on_other_threads_while_puts_evict(tmp_path):
    """get_tuple and list on reader threads while a graph runs on another, with a state cache so
    small that every put evicts: no read fails, and every read equals one from a cold saver."""
    repo = str(tmp_path / "repo")
    seen = {}
    with CasstoreSaver.from_url(repo, state_cache_bytes=20_000) as saver:
        graph = _graph(saver)
        config = {"configurable": {"thread_id": "t"}}
        graph.invoke({"messages": [_human(0)]}, config)

        def read():
            for tup in saver.list(config, limit=6):
                seen[tup.checkpoint["id"]] = [m.content for m in tup.checkpoint["channel_values"].get("messages", [])]
                saver.get_tuple(tup.config)
            saver.get_tuple(config)   # the latest: seeds the next put's reuse, beside the puts

        def run_graph():
            for t in range(1, 25):
                graph.invoke({"messages": [_human(t)]}, config)

        assert _run_beside([read] * 3, run_graph) == []
    assert len(seen) > 10
    with CasstoreSaver.from_url(repo) as cold:
        for cid, contents in seen.items():
            tup = cold.get_tuple({"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": cid}})
            assert [m.content for m in tup.checkpoint["channel_values"].get("messages", [])] == contents


def test_state_cache_stays_consistent_under_threads():
    """The saver's state cache itself, hammered by putting and reading threads: no read fails
    and its byte count stays the sum of what it holds (without its lock this fails in well
    under a second: a read's entry is evicted between lookup and reordering)."""
    from casstore.integrations.langgraph import _StateCache

    cache = _StateCache(limit=1000)
    counter = iter(range(10**9))
    loops = [lambda: cache.put(next(counter) % 50, {"n": 1}, 100), lambda: cache.put(next(counter) % 50, {}, 100),
             lambda: [cache.get(k) for k in range(50)], lambda: [cache.get(k) for k in range(50)]]
    assert _run_beside(loops, lambda: time.sleep(1.0)) == []
    assert cache.used == sum(cost for _, cost in cache._states.values()) <= 1000


def test_alist_streams_a_long_history(tmp_path):
    """alist hands out the first checkpoint after deserializing a batch, not the whole history,
    and yields exactly what list does, in the same order."""
    from casstore.integrations.langgraph import ALIST_BATCH

    async def main():
        async with CasstoreSaver.from_url(str(tmp_path / "repo")) as saver:
            graph, config = await _async_chat(saver, "long", 8)
            decoded = []
            real = saver._tuple
            saver._tuple = lambda *a, **k: decoded.append(a[2].checkpoint_id) or real(*a, **k)
            history = saver.alist(config)
            first = await history.__anext__()
            assert len(decoded) <= ALIST_BATCH
            rest = [t async for t in history]
            saver._tuple = real
            streamed = [first, *rest]
            assert len(streamed) > 3 * ALIST_BATCH
            listed = list(saver.list(config))
            assert [t.config for t in streamed] == [t.config for t in listed]
            assert [t.checkpoint for t in streamed] == [t.checkpoint for t in listed]

    asyncio.run(main())


def test_messages_read_again_are_fresh_objects_equal_to_a_cold_read(tmp_path):
    """A checkpoint's messages read a second time come from the saver's pickles of its first
    read (serde is not called for them), equal a cold saver's read field for field, and are new
    objects: mutating what one read returned leaves the next read as stored."""
    repo = str(tmp_path / "repo")
    config = {"configurable": {"thread_id": "t"}}
    with CasstoreSaver.from_url(repo) as saver:
        _turns(saver, config, 9)
        first = saver.get_tuple(config).checkpoint["channel_values"]["messages"]
        assert saver._thawed.used > 0

        loaded = []
        real = saver.serde.loads_typed

        def loads(typed):
            out = real(typed)
            loaded.extend(out if isinstance(out, list) else [out])
            return out
        saver.serde.loads_typed = loads
        second = saver.get_tuple(config).checkpoint["channel_values"]["messages"]
        saver.serde.loads_typed = real
        assert loaded, "the checkpoint itself is deserialized"
        assert not [o for o in loaded if hasattr(o, "content")], "messages read before were deserialized again"
        assert second == first and all(a is not b for a, b in zip(first, second))

        ai = next(m for m in second if m.type == "ai" and m.tool_calls)
        ai.tool_calls[0]["args"]["q"] = "mutated"
        ai.additional_kwargs["extra"] = 1
        third = saver.get_tuple(config).checkpoint["channel_values"]["messages"]
        assert third == first
        history = [c.checkpoint for c in saver.list(config)]
    with CasstoreSaver.from_url(repo) as cold:
        cold_msgs = cold.get_tuple(config).checkpoint["channel_values"]["messages"]
        assert [m.model_dump() for m in cold_msgs] == [m.model_dump() for m in third]
        assert [type(m) for m in cold_msgs] == [type(m) for m in third]
        assert [c.checkpoint for c in cold.list(config)] == history


def test_thawed_pickles_respect_their_bound(tmp_path):
    """The pickled messages stay within the saver's bound, and reads past it still equal a cold read."""
    repo = str(tmp_path / "repo")
    config = {"configurable": {"thread_id": "t"}}
    with CasstoreSaver.from_url(repo, state_cache_bytes=30_000) as saver:
        graph = _graph(saver)
        for t in range(10):
            graph.invoke({"messages": [_human(t)]}, config)
        warm = [c.checkpoint for c in saver.list(config)]
        assert 0 < saver._thawed.used <= 30_000
    with CasstoreSaver.from_url(repo) as cold:
        assert [c.checkpoint for c in cold.list(config)] == warm


def _same_tuple(a, b):
    assert (a.config, a.checkpoint, a.metadata, a.parent_config, a.pending_writes) == \
        (b.config, b.checkpoint, b.metadata, b.parent_config, b.pending_writes)


def test_a_fresh_saver_reads_and_writes_a_thread_without_listing_it(tmp_path, monkeypatch):
    """A new process's saver finds a checkpoint, its pending writes and the thread's latest
    checkpoint by label, and runs the next turn, without reading the thread's history."""
    repo = str(tmp_path / "repo")
    config = {"configurable": {"thread_id": "t"}}
    with CasstoreSaver.from_url(repo) as saver:
        _turns(saver, config, 6)
        listed = list(saver.list(config))  # the listing: what the saver returned before labels
    assert any(t.pending_writes for t in listed)

    def no_listing(*args, **kwargs):
        raise AssertionError("the thread was listed")

    with CasstoreSaver.from_url(repo) as fresh:
        monkeypatch.setattr(fresh.store, "list", no_listing)
        for want in listed[::3] + [t for t in listed if t.pending_writes]:
            _same_tuple(fresh.get_tuple(want.config), want)
        _same_tuple(fresh.get_tuple(config), listed[0])
        _graph(fresh).invoke({"messages": [_human(6)]}, config)
        latest = fresh.get_tuple(config)
        assert latest.parent_config is not None and len(latest.checkpoint["channel_values"]["messages"]) > \
            len(listed[0].checkpoint["channel_values"]["messages"])
    with CasstoreSaver.from_url(repo) as other:
        _same_tuple(other.get_tuple(config), latest)
        assert [t.config for t in other.list(config)][-len(listed):] == [t.config for t in listed]


def test_latest_is_the_greatest_checkpoint_id_when_puts_come_out_of_order(tmp_path):
    from langgraph.checkpoint.base import empty_checkpoint

    repo = str(tmp_path / "repo")
    base = {"configurable": {"thread_id": "o", "checkpoint_ns": ""}}
    ids = ["1ef00000-0000-6000-8000-00000000000" + d for d in "3152"]
    with CasstoreSaver.from_url(repo) as saver:
        for i, cid in enumerate(ids):
            saver.put(base, {**empty_checkpoint(), "id": cid}, {"source": "loop", "step": i, "parents": {}}, {})
        assert saver.get_tuple(base).checkpoint["id"] == max(ids)
    with CasstoreSaver.from_url(repo) as fresh:
        assert fresh.get_tuple(base).checkpoint["id"] == max(ids)
        # the greatest id goes: the rest are read from the listing, which knows the next greatest
        (greatest,) = fresh.store.find("langgraph:o", f"c0::{max(ids)}")
        fresh.store.delete(greatest.id)
    with CasstoreSaver.from_url(repo) as fresh:
        assert fresh.get_tuple(base).checkpoint["id"] == sorted(ids)[-2]
        assert [t.checkpoint["id"] for t in fresh.list(base)] == sorted(ids, reverse=True)[1:]
