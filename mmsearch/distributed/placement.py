"""Which search actor serves which shard: balanced by rows, and sticky across generations.

A shard keeps its actor for as long as it exists, so a new generation moves no data:
only shards that are new (fresh segments, merge results) are placed, largest first, on
the actor holding the fewest rows. Pure, so it is tested without Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mmsearch.store.manifest import ShardInfo


def assign(shards: Sequence[ShardInfo], previous: Mapping[str, int], actors: int) -> dict[str, int]:
    """Shard name -> actor number (0 .. ``actors`` - 1)."""
    if actors < 1:
        raise ValueError("at least one actor is needed")
    owner = {s.name: previous[s.name] for s in shards if previous.get(s.name, actors) < actors}
    load = [0] * actors
    for shard in shards:
        if shard.name in owner:
            load[owner[shard.name]] += shard.rows
    for shard in sorted((s for s in shards if s.name not in owner), key=lambda s: (-s.rows, s.name)):
        target = min(range(actors), key=lambda a: (load[a], a))
        owner[shard.name] = target
        load[target] += shard.rows
    return owner


def groups(owner: Mapping[str, int], actors: int) -> list[list[str]]:
    """The shard names of each actor, in name order."""
    out: list[list[str]] = [[] for _ in range(actors)]
    for name in sorted(owner):
        out[owner[name]].append(name)
    return out
