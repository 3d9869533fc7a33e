"""casstore benchmark suite: `python -m benchmarks [--quick] [--only chat,vectors] [--out PATH]`.

Each bench_*.py module exposes `run(ctx) -> list[dict]`, comparing casstore with
the baselines users have today (full msgpack+zstd files, tar|zstd, restic, borg)
on the same deterministic workload in the same run.
"""

BENCHMARKS = ("chat", "vectors", "workspace", "big", "langgraph", "s3", "crypto", "gc")
