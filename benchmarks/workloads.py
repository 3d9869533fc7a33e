"""Deterministic workloads: agent states that evolve step by step.

Every generator is seeded, so two runs (and two tools in one run) see the same
bytes. Text comes from a synthetic vocabulary drawn with a Zipf-like law, so it
compresses like prose (about 3x with zstd-3), not like repeated filler.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_LETTERS = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
_LETTER_WEIGHTS = np.array(
    [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8,
     2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.2, 0.2, 0.1, 0.1])


class TextGen:
    """Zipf-distributed words from a synthetic vocabulary, vectorised with numpy."""

    def __init__(self, seed: int = 0, vocab: int = 30000, zipf_s: float = 1.0) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        lengths = np.clip(rng.poisson(5.0, vocab) + 1, 1, 14)
        width = int(lengths.max()) + 2
        words = np.zeros((vocab, width), dtype=np.uint8)
        p = _LETTER_WEIGHTS / _LETTER_WEIGHTS.sum()
        for i, n in enumerate(lengths):
            words[i, :n] = rng.choice(_LETTERS, size=n, p=p)
        # Every word carries its trailing separator: mostly a space, sometimes punctuation.
        seps = rng.choice(np.frombuffer(b" ,.\n", dtype=np.uint8), size=vocab, p=[0.86, 0.07, 0.05, 0.02])
        words[np.arange(vocab), lengths] = seps
        self.words = words
        self.lens = lengths + 1
        ranks = np.arange(1, vocab + 1, dtype=np.float64)
        weights = 1.0 / ranks**zipf_s
        # A lookup table of word indices, each word repeated in proportion to its
        # weight: drawing a uniform slot is much faster than a CDF search.
        counts = np.maximum(1, np.round(weights / weights.sum() * (1 << 20))).astype(np.int64)
        self.table = np.repeat(np.arange(vocab, dtype=np.int32), counts)

    def text_bytes(self, nbytes: int) -> bytes:
        """About `nbytes` of ASCII text (exactly `nbytes`, cut at the end)."""
        nwords = nbytes // 5 + 16
        out = bytearray()
        while len(out) < nbytes:
            idx = self.table[self.rng.integers(0, len(self.table), nwords)]
            rows = self.words[idx]
            mask = np.arange(rows.shape[1])[None, :] < self.lens[idx][:, None]
            out += rows[mask].tobytes()
        return bytes(out[:nbytes])

    def text(self, nchars: int) -> str:
        return self.text_bytes(nchars).decode("ascii")


def _hexid(rnd: random.Random) -> str:
    return "%032x" % rnd.getrandbits(128)


# --------------------------------------------------------------------------- chat

def chat_states(turns: int = 300, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Yield a chat agent's state after each turn.

    The SAME dict object is yielded every time and mutated in place afterwards;
    a caller that keeps a state past the next step must deep-copy it. States are
    plain msgpack-serialisable Python (dict/list/str/int/float).
    """
    rnd = random.Random(seed)
    gen = TextGen(seed)
    ts = 1_700_000_000.0
    state: dict[str, Any] = {
        "messages": [],
        "memory": {"persona": gen.text(2000), "human": gen.text(1500), "notes": []},
        "tool_results": [],
        "step": 0,
    }
    for turn in range(turns):
        for role in ("user", "assistant"):
            ts += rnd.uniform(1.0, 30.0)
            state["messages"].append({
                "role": role,
                "content": gen.text(rnd.randint(200, 3000)),
                "id": _hexid(rnd),
                "ts": round(ts, 3),
            })
        if rnd.random() < 0.5:
            state["tool_results"].append({
                "tool": rnd.choice(["search", "read_file", "run_python", "http_get", "sql"]),
                "call_id": _hexid(rnd),
                "turn": turn,
                "output": gen.text(rnd.randint(1024, 20 * 1024)),
            })
        if turn % 10 == 9:
            _edit_memory(state["memory"], gen, rnd)
        state["step"] = turn
        yield state


def _edit_memory(memory: dict[str, Any], gen: TextGen, rnd: random.Random) -> None:
    """Rewrite a span in the middle of a memory block and add or change a note."""
    key = rnd.choice(["persona", "human"])
    text = memory[key]
    at = rnd.randint(0, len(text))
    memory[key] = text[:at] + gen.text(rnd.randint(20, 200)) + text[at + rnd.randint(0, 100):]
    if memory["notes"] and rnd.random() < 0.3:
        memory["notes"][rnd.randrange(len(memory["notes"]))] = gen.text(rnd.randint(50, 400))
    else:
        memory["notes"].append(gen.text(rnd.randint(50, 400)))


# ------------------------------------------------------------------------- vectors

def vector_states(rows: int = 20000, dim: int = 768, steps: int = 30, grow: int = 200,
                  overwrite: int = 20, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Yield `steps` states of an embedding store; step 0 is the initial state.

    Each yield is a FRESH dict with a fresh embeddings array (appending copies the
    array), so earlier yielded states stay unchanged and may be kept as-is.
    """
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((rows, dim), dtype=np.float32)
    ids = np.arange(rows, dtype=np.int64)
    yield {"embeddings": emb, "ids": ids, "step": 0}
    for step in range(1, steps):
        new = rng.standard_normal((grow, dim), dtype=np.float32)
        emb = np.concatenate([emb, new])
        ids = np.concatenate([ids, np.arange(len(ids), len(ids) + grow, dtype=np.int64)])
        where = rng.choice(len(emb) - grow, size=min(overwrite, len(emb) - grow), replace=False)
        emb[where] = rng.standard_normal((len(where), dim), dtype=np.float32)
        yield {"embeddings": emb, "ids": ids, "step": step}


# ----------------------------------------------------------------------- workspace

def workspace_steps(root: str | os.PathLike, files: int = 300, steps: int = 20,
                    seed: int = 0) -> Iterator[int]:
    """Build a workspace directory under `root`, then edit it; yield the step number.

    Step 0 is the freshly built tree (text/code/JSON files of 1-50 KB, three
    binary blobs of 1-4 MB, and `events.db`, a SQLite database). Each later step
    edits a few files in the middle, adds and deletes a couple and inserts rows.
    The directory is quiescent (database closed) whenever the generator yields.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    gen = TextGen(seed + 1)
    brng = np.random.default_rng(seed + 2)
    paths: list[Path] = []
    for i in range(files):
        paths.append(_write_text_file(root, i, gen, rnd))
    for i in range(3):
        blob = root / "data" / f"blob{i}.bin"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(brng.bytes(rnd.randint(1 << 20, 4 << 20)))
    db = root / "events.db"
    _insert_events(db, gen, rnd, 2000, create=True)
    next_id = files
    yield 0
    for step in range(1, steps):
        for path in rnd.sample(paths, min(5, len(paths))):
            _edit_middle(path, gen, rnd)
        for _ in range(2):
            paths.append(_write_text_file(root, next_id, gen, rnd))
            next_id += 1
        for _ in range(2):
            victim = paths.pop(rnd.randrange(len(paths)))
            victim.unlink()
        _insert_events(db, gen, rnd, 200)
        yield step


def _write_text_file(root: Path, i: int, gen: TextGen, rnd: random.Random) -> Path:
    kind = rnd.choice(["py", "md", "json"])
    size = rnd.randint(1024, 50 * 1024)
    sub = root / ("src" if kind == "py" else "docs" if kind == "md" else "config") / f"d{i % 7}"
    sub.mkdir(parents=True, exist_ok=True)
    path = sub / f"file{i:04d}.{kind}"
    if kind == "json":
        obj, n = [], 0
        while n < size:
            rec = {"id": _hexid(rnd), "name": gen.text(12).strip(), "score": round(rnd.random(), 6),
                   "tags": gen.text(40).split()[:5], "body": gen.text(rnd.randint(50, 400))}
            n += len(json.dumps(rec))
            obj.append(rec)
        path.write_text(json.dumps(obj, indent=1))
    elif kind == "py":
        lines, n = [], 0
        while n < size:
            w = gen.text(60).replace(",", "").replace(".", "").split()
            line = "    " * rnd.randint(0, 3) + (
                f"def {'_'.join(w[:2])}({', '.join(w[2:4])}):" if rnd.random() < 0.1
                else f"{w[0] if w else 'x'} = {'_'.join(w[1:3])}({rnd.randint(0, 999)})")
            lines.append(line)
            n += len(line) + 1
        path.write_text("\n".join(lines) + "\n")
    else:
        path.write_text(gen.text(size))
    return path


def _edit_middle(path: Path, gen: TextGen, rnd: random.Random) -> None:
    data = path.read_bytes()
    at = rnd.randint(len(data) // 4, max(len(data) // 4, 3 * len(data) // 4))
    path.write_bytes(data[:at] + gen.text_bytes(rnd.randint(10, 500)) + data[at + rnd.randint(0, 200):])


def _insert_events(db: Path, gen: TextGen, rnd: random.Random, n: int, create: bool = False) -> None:
    con = sqlite3.connect(db)
    try:
        if create:
            con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL, kind TEXT, payload TEXT)")
        con.executemany(
            "INSERT INTO events (ts, kind, payload) VALUES (?, ?, ?)",
            [(rnd.random() * 1e9, rnd.choice(["obs", "act", "msg", "err"]), gen.text(rnd.randint(50, 600)))
             for _ in range(n)])
        con.commit()
    finally:
        con.close()


# ------------------------------------------------------------------------- big

def big_state(total_bytes: int = 1 << 30, seed: int = 0) -> dict[str, Any]:
    """One large state: half long text strings, half float32 arrays (about `total_bytes`)."""
    gen = TextGen(seed)
    rng = np.random.default_rng(seed)
    half = total_bytes // 2
    piece = min(16 << 20, max(1 << 20, half // 8))
    texts, n = [], 0
    while n < half:
        size = min(piece, half - n)
        texts.append(gen.text(size))
        n += size
    arrays, n = [], 0
    while n < total_bytes - half:
        size = min(piece, total_bytes - half - n) // 4
        if size == 0:
            break
        arrays.append(rng.standard_normal(size, dtype=np.float32).reshape(-1, 64) if size % 64 == 0
                      else rng.standard_normal(size, dtype=np.float32))
        n += size * 4
    return {"texts": texts, "arrays": arrays, "meta": {"seed": seed, "total_bytes": total_bytes}}


def logical_size(obj: Any) -> int:
    """Payload bytes in a state: string/bytes lengths plus array nbytes (no framing)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, dict):
        return sum(logical_size(k) + logical_size(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sum(logical_size(v) for v in obj)
    return 8
