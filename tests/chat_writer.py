"""A writer process for crash tests: snapshot a growing chat state forever, printing each committed id.

    python -m tests.chat_writer REPO_URL [STORAGE_OPTIONS_JSON INDEX_PATH]

Each line is "<snapshot id> <step>"; step i set row i % 2000 of the embeddings to i,
so a test can check what any reported snapshot must restore to.
"""

from __future__ import annotations

import json
import sys

import numpy as np

import casstore
from tests.helpers import add_turn, chat_state


def main(argv: list[str]) -> None:
    options = json.loads(argv[1]) if len(argv) > 1 else None
    store = casstore.open(argv[0], storage_options=options, index_path=argv[2] if len(argv) > 2 else None)
    state = chat_state(20)
    state["emb"] = np.random.default_rng(0).normal(size=(2000, 128)).astype(np.float32)
    i = 0
    while True:
        add_turn(state, i)
        state["emb"][i % 2000] = i
        info = store.snapshot(state, agent_id="w", session_id="s")
        print(info.id, i, flush=True)
        i += 1


if __name__ == "__main__":
    main(sys.argv[1:])
