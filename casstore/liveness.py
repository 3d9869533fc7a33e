"""Which chunks and tree nodes the snapshots reference, walking shared subtrees once."""

from __future__ import annotations

from typing import Callable, Iterable

from .tree import decode_node

FetchNodes = Callable[[list[bytes]], dict[bytes, bytes]]


def reachable(roots: Iterable[tuple[bytes, int]], fetch: FetchNodes,
              on_data: Callable[[bytes, int], None] | None = None) -> tuple[set[bytes], set[bytes]]:
    """(data chunk hashes, node hashes) reachable from (root, height) pairs.

    The walk goes level by level over all snapshots at once, so each node is
    fetched once however many snapshots share it, and fetches are batched.
    on_data(hash, root_index) is called for each data chunk the first time
    it is reached, naming the first root that reached it.
    """
    data: set[bytes] = set()
    nodes: set[bytes] = set()
    frontier: dict[bytes, tuple[int, int]] = {}  # node hash -> (level, root index)
    for i, (root, height) in enumerate(roots):
        if root not in frontier:
            frontier[root] = (height - 1, i)
    while frontier:
        nodes.update(frontier)
        fetched = fetch(list(frontier))
        nxt: dict[bytes, tuple[int, int]] = {}
        for h, (level, owner) in frontier.items():
            _, entries = decode_node(fetched[h], level)
            for child, _size in entries:
                if level == 0:
                    if child not in data:
                        data.add(child)
                        if on_data is not None:
                            on_data(child, owner)
                elif child not in nodes and child not in nxt:
                    nxt[child] = (level - 1, owner)
        frontier = nxt
    return data, nodes
