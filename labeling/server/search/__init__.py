"""An Argilla search engine answered from Argilla's own database (SQLite or PostgreSQL).

Runs INSIDE the Argilla server venv (only argilla_server and its dependencies are importable there).
Argilla 2.x needs Elasticsearch or OpenSearch only as a search index over data it already keeps in its
database; `SearchEngine.register` lets us answer the same queries from the database itself, so the
embedded server needs no JVM, no Docker and no index to keep in sync: every write method is a no-op.

Semantics mirror argilla_server/search_engine/commons.py (the Elasticsearch engine):
- filters: record props, metadata (terms/range, arrays match any element), suggestions (value, score,
  agent, type), responses per user (pending = the user has no response; pending without a user = no
  response at all), response values; `and` of all.
- filters compare numbers as numbers on numeric fields (5 equals 5.0) and read dates as ES does (partial
  dates, epoch milliseconds, an inclusive upper bound rounded up: `le 2024-05-01` takes in the day).
- text: simple_query_string with AND as default operator over `fields.*` or one field, scored BM25 with each
  field's statistics over the whole dataset (kept per process until the records' fields change); words
  by Unicode text segmentation (UAX #29, the `regex` package), as ES's standard analyzer splits them; the
  query read as Lucene's SimpleQueryParser reads it (`*`, `|`, `+`, `-`, parentheses, phrases with slop,
  prefixes, fuzzy terms without transpositions, each standing for at most 10 terms of the index).
- sort: ES defaults (missing values last, asc takes the min and desc the max of multi-valued fields,
  response values averaged); /me searches without sort come in a random order of each user's own, stable
  (md5 of user, dataset and record: ES's random_score seeded with the user id), also under a text query.
- similarity: exact cosine over the stored vectors (numpy), least similar = most similar to -v,
  score (1 + cos) / 2 like ES `cosine`.
- progress and metrics: terms / min-max aggregations.
One deliberate difference: per-user progress counts only that user's responses (ES aggregates the
statuses of every response on the records the user answered, which double counts shared records).

Modules: dialects (connection pool, SQLite / PostgreSQL differences), query (words, the query parser,
matching), scoring (BM25 and the field statistics), filters (filters and sorts as SQL), engine (the class
Argilla calls). Importing the package registers the engine: labeling/server/main.py does so before starting
the app or the worker.
"""

from .engine import SQLSearchEngine

__all__ = ["SQLSearchEngine"]
