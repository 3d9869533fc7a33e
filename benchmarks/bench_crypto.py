"""Encryption at rest: snapshot and restore throughput of an encrypted vs an unencrypted repository.

Same run, same data, alternating the two modes round by round (best of the
rounds for each), so machine noise hits both alike:

* big: one large state (half text, half float32 arrays) snapshotted into a
  fresh repository and restored: MB/s of the payload;
* chat: the chat workload (a growing conversation, one snapshot per turn):
  median snapshot time per step, median restore time (best of three) of
  ten snapshots spread over the lineage.

Opening the encrypted repository (scrypt) is outside the timings: it is paid
once per process, not per snapshot. Target: encrypted >= 0.85 x unencrypted.
"""

from __future__ import annotations

import copy
import shutil
from typing import Any

import casstore

from .harness import Context, dir_bytes, median, states_equal, target_row, timed
from .workloads import big_state, chat_states, logical_size

PASSWORD = "benchmark password"


def _open(ctx: Context, name: str, encrypted: bool) -> casstore.Store:
    path = ctx.tool_dir("crypto", name)
    kw: dict[str, Any] = {"password": PASSWORD, "encrypt": True} if encrypted else {}
    # the encrypted repository's index would go to the cache folder: keep both beside their data
    return casstore.open(str(path / "repo"), index_path=str(path / "index"), **kw)


def _big_round(ctx: Context, state: dict, size: int, encrypted: bool) -> dict[str, Any]:
    name = f"big-{'enc' if encrypted else 'plain'}"
    with _open(ctx, name, encrypted) as store:
        info, snap_s = timed(store.snapshot, state)
        out, restore_s = timed(store.restore, info.id)
        ok = states_equal(state, out) is None
    stored = dir_bytes(ctx.scratch / "crypto" / name / "repo")
    shutil.rmtree(ctx.scratch / "crypto" / name)
    return {"snap_s": snap_s, "restore_s": restore_s, "snapshot_MBps": size / snap_s / 1e6,
            "restore_MBps": size / restore_s / 1e6, "stored_bytes": stored, "ok": ok}


def _chat_round(ctx: Context, states: list[dict], encrypted: bool) -> dict[str, Any]:
    name = f"chat-{'enc' if encrypted else 'plain'}"
    snaps, restores, ids = [], [], []
    with _open(ctx, name, encrypted) as store:
        for s in states:
            info, sec = timed(store.snapshot, s)
            snaps.append(sec)
            ids.append(info.id)
        ok = True
        for i in range(0, len(ids), max(1, len(ids) // 10)):
            best = None
            for _ in range(3):   # a restore takes milliseconds: the best of three filters scheduler noise
                out, sec = timed(store.restore, ids[i])
                best = sec if best is None else min(best, sec)
            restores.append(best)
            ok = ok and states_equal(states[i], out) is None
    stored = dir_bytes(ctx.scratch / "crypto" / name / "repo")
    return {"snap_med": median(snaps), "restore_med": median(restores), "stored_bytes": stored, "ok": ok,
            "raw_bytes": sum(logical_size(s) for s in states)}


def run(ctx: Context) -> list[dict[str, Any]]:
    rounds = 3
    size = (64 << 20) if ctx.quick else (256 << 20)
    turns = 30 if ctx.quick else 150
    ctx.log(f"  crypto: big state {size >> 20} MiB and chat {turns} turns, {rounds} rounds each mode")
    state = big_state(size, seed=1)
    payload = logical_size(state)
    chat = [copy.deepcopy(s) for s in chat_states(turns=turns, seed=0)]

    big: dict[bool, list[dict]] = {False: [], True: []}
    talk: dict[bool, list[dict]] = {False: [], True: []}
    for r in range(rounds):
        for enc in ((False, True) if r % 2 == 0 else (True, False)):
            big[enc].append(_big_round(ctx, state, payload, enc))
            talk[enc].append(_chat_round(ctx, chat, enc))

    rows = []
    best: dict[bool, dict[str, Any]] = {}
    for enc in (False, True):
        b, c = big[enc], talk[enc]
        best[enc] = {"snapshot_MBps": max(x["snapshot_MBps"] for x in b), "restore_MBps": max(x["restore_MBps"] for x in b),
                     "chat_snap": min(x["snap_med"] for x in c), "chat_restore": min(x["restore_med"] for x in c)}
        rows.append({
            "kind": "result", "benchmark": "crypto", "tool": "casstore-encrypted" if enc else "casstore",
            "status": "ok", "snapshots": turns, "raw_bytes": c[0]["raw_bytes"], "stored_bytes": c[0]["stored_bytes"],
            "raw_over_stored": c[0]["raw_bytes"] / c[0]["stored_bytes"],
            "snapshot_median_s": best[enc]["chat_snap"], "restore_median_s": best[enc]["chat_restore"],
            "big_state_bytes": payload, "big_stored_bytes": b[0]["stored_bytes"],
            "snapshot_MBps": best[enc]["snapshot_MBps"], "restore_MBps": best[enc]["restore_MBps"],
            "restore_ok": all(x["ok"] for x in b + c),
        })
    plain, enc = best[False], best[True]
    return rows + [
        target_row("crypto", "big snapshot MB/s enc/plain", enc["snapshot_MBps"] / plain["snapshot_MBps"], ">=", 0.85, ">= 0.85"),
        target_row("crypto", "big restore MB/s enc/plain", enc["restore_MBps"] / plain["restore_MBps"], ">=", 0.85, ">= 0.85"),
        target_row("crypto", "chat snapshot speed enc/plain", plain["chat_snap"] / enc["chat_snap"], ">=", 0.85, ">= 0.85"),
        target_row("crypto", "chat restore speed enc/plain", plain["chat_restore"] / enc["chat_restore"], ">=", 0.85, ">= 0.85"),
    ]
