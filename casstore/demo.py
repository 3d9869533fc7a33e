"""`python -m casstore.demo`: snapshot a simulated agent every step, then show what it cost.

The agent holds a growing conversation, memory blocks edited now and then,
tool results and an embedding matrix that gains rows. Every step is
snapshotted into a local folder repository (./.casstore by default); at the
end the demo restores an early step and one value of the last, verifies the
repository, and prints the dedup ratio next to what one zstd-compressed file
per step would cost.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time

import msgpack
import numpy as np
import zstandard

import casstore

WORDS = [w for w in ("the agent user tool search result memory file plan step answer question data model "
                     "context token summary error retry budget report customer order ticket refund policy "
                     "account invoice meeting schedule draft email note code test deploy review").split()]


def _text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) + (str(rng.randint(0, 999)) if rng.random() < 0.1 else "")
                    for _ in range(n_words))


def simulate(steps: int, seed: int = 0):
    """Yield the agent's state after each step (one dict, mutated in place)."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    state = {"messages": [], "memory": {"persona": _text(rng, 60), "human": _text(rng, 40)},
             "tool_results": [], "embeddings": nrng.normal(size=(256, 384)).astype(np.float32), "step": 0}
    for step in range(steps):
        state["messages"].append({"role": "user", "content": _text(rng, rng.randint(20, 200)), "turn": step})
        state["messages"].append({"role": "assistant", "content": _text(rng, rng.randint(40, 400)), "turn": step})
        if step % 2:
            state["tool_results"].append({"tool": "search", "output": _text(rng, rng.randint(150, 2500))})
        if step % 10 == 9:
            state["memory"]["human"] = _text(rng, 40)
        state["embeddings"] = np.concatenate([state["embeddings"], nrng.normal(size=(4, 384)).astype(np.float32)])
        state["step"] = step
        yield state


def _baseline_bytes(state: dict, level: int = 3) -> int:
    def default(o):
        if isinstance(o, np.ndarray):
            return {"dtype": o.dtype.str, "shape": o.shape, "data": o.tobytes()}
        raise TypeError(type(o))
    return len(zstandard.ZstdCompressor(level=level).compress(msgpack.packb(state, default=default)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m casstore.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", default=None, help="repository URL (default: $CASSTORE_REPO, else ./.casstore)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--fresh", action="store_true", help="delete a local repository folder first")
    args = ap.parse_args(argv)
    url, _ = casstore.config.resolve_url(args.repo)
    if args.fresh and os.path.isdir(url):
        shutil.rmtree(url)

    baseline = 0
    times = []
    first_id = None
    with casstore.open(url) as store:
        for state in simulate(args.steps):
            t = time.perf_counter()
            info = store.snapshot(state, agent_id="demo-agent", session_id="session-1",
                                  description=f"after step {state['step']}", metadata={"step": state["step"]})
            times.append(time.perf_counter() - t)
            first_id = first_id or info.id
            baseline += _baseline_bytes(state)
            if state["step"] % 50 == 0 or state["step"] == args.steps - 1:
                print(f"step {state['step']:4d}  snapshot {info.id[:12]}  state {info.raw_size / 1e6:6.2f} MB  "
                      f"new {info.stored_size / 1e3:8.1f} KB  {times[-1] * 1e3:6.1f} ms")
        early = store.restore(first_id)
        assert early["step"] == 0 and len(early["messages"]) == 2
        store.drop_caches()   # read one value of the last step from storage, as a new process would
        t = time.perf_counter()
        memory = store.restore(info.id, path="memory")
        part_ms = (time.perf_counter() - t) * 1e3
        assert memory == state["memory"]
        report = store.verify()
        stats = store.stats()
        times.sort()
        print()
        print(f"{args.steps} snapshots in {url}")
        print(f"  logical bytes   {stats.logical_bytes / 1e6:10.1f} MB")
        print(f"  stored bytes    {stats.stored_bytes / 1e6:10.2f} MB   (dedup ratio {stats.dedup_ratio:.0f}x)")
        if os.path.isdir(url):
            on_disk = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(url) for f in files)
            print(f"  on disk         {on_disk / 1e6:10.2f} MB   (packs, manifests and the local index)")
        print(f"  one zstd-3 msgpack file per step would take {baseline / 1e6:.0f} MB "
              f"({stats.logical_bytes / baseline:.1f}x smaller than raw, vs {stats.dedup_ratio:.0f}x here)")
        print(f"  median snapshot {times[len(times) // 2] * 1e3:.1f} ms;  first step restored exactly; "
              f"verify: {'ok' if report.ok else report.errors}")
        print(f"  the last step's memory alone, restore(id, path='memory'): {part_ms:.2f} ms from storage")
    print("\nThe same repository from the shell:  casstore --repo", url, "ls | stats | verify | show ID")
    # this interpreter's CLI: a `casstore` found first on PATH may belong to another installation
    subprocess.run([sys.executable, "-m", "casstore_cli.main", "--repo", url, "stats"], check=False)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
