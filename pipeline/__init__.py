"""prefab's pipeline: stages that turn prompts into preference pairs, in layers: core, models, sandbox, stages,
commands (docs/architecture.md)."""

import os

# polars allocates through its own jemalloc, which it sets to keep freed pages for 0.5-1 s before giving them back:
# a stage that streams a large table in parts then grew its RSS with the table's length (bench/bench_scale.py), by
# memory it no longer used. Give freed pages back at once; the cost is a few madvise calls per streamed part.
# polars appends this variable to its own setting when it loads (its documented override), so it is set here,
# before any stage imports polars; a user's own setting wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
