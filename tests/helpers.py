"""Small helpers shared by tests: chat-like states and deep equality with numpy."""

from __future__ import annotations

import os
import random

import numpy as np


def chat_state(turns: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    msgs = []
    for i in range(turns):
        for role in ("user", "assistant"):
            n = rng.randint(30, 400)
            msgs.append({"role": role, "content": " ".join(rng.choice(words) for _ in range(n)), "id": len(msgs)})
    return {"messages": msgs, "memory": {"persona": "helpful", "notes": ["n1"]}, "step": turns}


def add_turn(state: dict, seed: int) -> None:
    extra = chat_state(1, seed)["messages"]
    for m in extra:
        m["id"] = len(state["messages"])
        state["messages"].append(m)
    state["step"] += 1


def deep_equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return a == b


def files_under(path) -> dict[str, int]:
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = os.path.getsize(p)
    return out
