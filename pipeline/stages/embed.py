"""Embeddings: sentence-transformers vectors for prompts and candidates, cached by (text hash, model).

`embed_texts(texts, model, cache_dir)` is the one entry point every stage uses (dedup before generation,
embed after judging, pair for similarity). Vectors are L2-normalised, so a dot product is a cosine.
The vector cache is a SQLite file in the run directory (`vectors.sqlite`, WAL, one row per text and
model): a second run over the same texts loads no model and encodes nothing, and a killed run keeps
every chunk it had finished. A local model folder is keyed with its fingerprint (pipeline/models/checkpoints.py),
so an embedder retrained in place encodes again instead of serving its old weights' vectors.

The embed stage writes `embeddings` (vectors), `candidate_scores` (relevance to the prompt, near-identical
siblings) and dataset-diversity numbers (Vendi score, cluster coverage and entropy) into the manifest.
"""

import functools
import hashlib
import sqlite3
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.core.config import EMBEDDED_EMBEDDER, Config, EmbedConfig
from pipeline.core.errors import ModelError
from pipeline.core.progress import summary
from pipeline.core.queries import active_prompts, answered
from pipeline.core.schema import TABLES, empty
from pipeline.core.stage import Stage
from pipeline.core.store import Run, TableParts
from pipeline.models.checkpoints import identity, local_fingerprints
from pipeline.models.embedded import resolve_embedder
from pipeline.models.llm import own_ticker, ticker
from pipeline.models.ray_cluster import replica_device, run_batches

VECTOR_CACHE = "vectors.sqlite"
CHUNK = 2048  # texts encoded between cache writes (and progress updates)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def prompt_text(messages: list[dict]) -> str:
    """What a prompt is about: its user turns. A shared system prompt would make every prompt look alike."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return "\n\n".join(users or [m["content"] for m in messages])


class VectorCache:
    """SQLite store of float32 vectors keyed by (model, text hash)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT, hash TEXT, vector BLOB, PRIMARY KEY (model, hash))"
        )

    def get_many(self, model: str, hashes: list[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for i in range(0, len(hashes), 900):
            chunk = hashes[i : i + 900]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT hash, vector FROM vectors WHERE model = ? AND hash IN ({marks})", [model, *chunk]
            )
            out.update(rows)
        return out

    def put_many(self, model: str, hashes: list[str], vectors: np.ndarray) -> None:
        rows = [(model, h, v.tobytes()) for h, v in zip(hashes, vectors.astype(np.float32, copy=False), strict=True)]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO vectors (model, hash, vector) VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


def cache_name(model: str) -> str:
    """The model's key in the vector cache: its name, and for a local folder the fingerprint of its files too."""
    stamp = identity(model)
    return f"{model}@{stamp}" if stamp else model


def load_model(model: str = EMBEDDED_EMBEDDER, device: str | None = None):
    """The SentenceTransformer for a name or path (the embedded one resolved locally); loaded once per process, and
    again when a local folder's files change."""
    return _load_model(model, device, identity(model))


@functools.lru_cache(maxsize=4)
def _load_model(model: str, device: str | None, stamp: str | None):
    from sentence_transformers import SentenceTransformer  # start-up: sentence_transformers

    path = resolve_embedder(model)
    try:
        return SentenceTransformer(path, device=device)
    except Exception as e:  # missing files, bad config, no network for a hub name
        raise ModelError(
            f"could not load embedding model {model!r}: {e}",
            hint="pass a sentence-transformers model directory, or embedded:all-minilm-l6-v2",
        ) from e


def embed_texts(
    texts: list[str],
    model: str = EMBEDDED_EMBEDDER,
    cache_dir: str | Path | None = None,
    *,
    batch_size: int = 64,
    device: str | None = None,
    ray=None,
    description: str = "embed",
    tick=None,
) -> np.ndarray:
    """Normalised float32 vectors, one row per text; cached texts are not encoded again (nor the model loaded).
    With `ray` (a RayConfig) the chunks are encoded by replicas on a Ray cluster, and cached here as they return.
    A stage embedding in parts passes its progress `tick` (pipeline.models.llm.ticker) for one bar over all of them."""
    hashes = [text_hash(t) for t in texts]
    cache = VectorCache(Path(cache_dir) / VECTOR_CACHE) if cache_dir is not None else None
    key = cache_name(model)
    found = cache.get_many(key, list(set(hashes))) if cache else {}
    todo: dict[str, str] = {}
    for h, t in zip(hashes, texts, strict=True):
        if h not in found and h not in todo:
            todo[h] = t
    if tick and len(texts) > len(todo):
        tick(len(texts) - len(todo), cached=True)
    if todo:
        # longest first, like encode() does inside one call, so chunking costs no extra padding
        order = sorted(todo, key=lambda h: -len(todo[h]))
        with own_ticker(description, len(order), 0, tick) as advance:

            def keep(chunk: list[str], vecs: np.ndarray) -> None:
                if cache:
                    cache.put_many(key, chunk, vecs)
                found.update((h, v.tobytes()) for h, v in zip(chunk, vecs, strict=True))
                advance(len(chunk))

            if ray is None:
                st = load_model(model, device)
                for i in range(0, len(order), CHUNK):
                    chunk = order[i : i + CHUNK]
                    keep(chunk, encode(st, [todo[h] for h in chunk], batch_size))
            else:
                size = max(batch_size, min(CHUNK, -(-len(order) // ray.replicas)))  # every replica gets work
                chunks = [order[i : i + size] for i in range(0, len(order), size)]
                run_batches(
                    ray,
                    load_model,
                    (model, replica_device(ray, device)),
                    encode,
                    [([todo[h] for h in chunk], batch_size) for chunk in chunks],
                    lambda k, vecs: keep(chunks[k], vecs),
                    stamp=identity(model),
                )
    if cache:
        cache.close()
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.frombuffer(b"".join(found[h] for h in hashes), dtype=np.float32).reshape(len(texts), -1).copy()


def encode(st, texts: list[str], batch_size: int) -> np.ndarray:
    return st.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    ).astype(np.float32, copy=False)


def embed_model(config) -> str:
    """The embedding model a run uses (the embed section's, else the embedded default)."""
    return config.embed.model if config.embed is not None else EMBEDDED_EMBEDDER


def local_embedder(config: Config) -> dict[str, str]:
    """The fingerprint of the embedder where it is a local folder (retrained in place, the stage is stale)."""
    return local_fingerprints([embed_model(config)])


def vectors_frame(ids: list[str], kind: str, model: str, vectors: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": ids,
            "kind": [kind] * len(ids),
            "model": [model] * len(ids),
            "vector": pl.Series("vector", vectors).cast(pl.List(pl.Float32)),
        }
    )


def vector_matrix(embeddings: pl.DataFrame, ids: list[str]) -> np.ndarray | None:
    """Rows of the embeddings table in the order of ids; None when any id has no vector."""
    if embeddings.is_empty() or not ids:
        return None
    lookup = dict(zip(embeddings["id"].to_list(), range(embeddings.height), strict=True))
    if any(i not in lookup for i in ids):
        return None
    rows = embeddings[[lookup[i] for i in ids]]
    return np.asarray(rows["vector"].to_list(), dtype=np.float32)


# embedding scores


def relevance(prompt_vectors: np.ndarray, candidate_vectors: np.ndarray) -> np.ndarray:
    """Row-wise cosine of each candidate with its prompt (both normalised)."""
    return np.einsum("ij,ij->i", prompt_vectors, candidate_vectors)


def near_identical(groups: list[str], vectors: np.ndarray, threshold: float) -> list[int | None]:
    """For each row, the index of an earlier row of the same group with cosine >= threshold (else None)."""
    out: list[int | None] = [None] * len(groups)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    for rows in members.values():
        if len(rows) < 2:
            continue
        sims = vectors[rows] @ vectors[rows].T
        for a in range(1, len(rows)):
            hits = np.nonzero(sims[a, :a] >= threshold)[0]
            if len(hits):
                out[rows[a]] = rows[int(hits[0])]
    return out


def vendi_score(vectors: np.ndarray) -> float:
    """Vendi score (Friedman & Dieng 2023) with the cosine kernel: exp of the entropy of eig(K/n).

    For normalised vectors the non-zero eigenvalues of X X^T / n equal those of X^T X / n (d x d), so the
    exact score costs O(n d^2) with no n x n matrix. It reads as "the effective number of distinct prompts".
    """
    if len(vectors) == 0:
        return 0.0
    x = vectors.astype(np.float64)
    return vendi_from_gram(x.T @ x, len(x))


def vendi_from_gram(gram: np.ndarray, n: int) -> float:
    """vendi_score from X^T X summed over parts of the rows (a stage that never holds all the vectors)."""
    if n == 0:
        return 0.0
    eig = np.linalg.eigvalsh(gram / n)
    eig = eig[eig > 1e-12]
    eig = eig / eig.sum()
    return float(np.exp(-(eig * np.log(eig)).sum()))


def cluster_stats(clusters: list[int | None] | pl.Series, covered: list[int | None] | pl.Series | None = None) -> dict:
    """Cluster count, normalised entropy of their sizes (1 = balanced) and share of clusters covered."""
    sizes = pl.Series(clusters, dtype=pl.Int64).drop_nulls().value_counts()
    k = sizes.height
    if k == 0:
        return {}
    p = sizes["count"].to_numpy() / sizes["count"].sum()
    entropy = float(-(p * np.log(p)).sum() / np.log(k)) if k > 1 else 1.0
    out = {"clusters": k, "cluster_entropy": round(entropy, 4)}
    if covered is not None:
        out["cluster_coverage"] = round(pl.Series(covered, dtype=pl.Int64).drop_nulls().n_unique() / k, 4)
    return out


def step(config: Config, run: Run, **_) -> dict:
    """Embed prompts and their candidates part by part (embed.part_size prompts), writing embeddings and
    candidate_scores in parts; the Vendi score is summed over parts as X^T X, so no part holds every vector."""
    cfg = config.require("embed")
    model = cfg.model
    candidates = answered(run.scan("candidates") if run.has("candidates") else empty("candidates").lazy())
    n_prompts = run.height("prompts")
    n_candidates = candidates.select(pl.len()).collect().item()
    vectors, scores = TableParts(run, "embeddings"), TableParts(run, "candidate_scores")
    vectors.clear()  # the vector cache makes a redone part cheap: parts are not resumed
    scores.clear()
    keys: list[str] = []
    gram, n_active, relevance_sum, twins = None, 0, 0.0, 0
    with ticker("embed", n_prompts + n_candidates) as tick:
        for index, part in enumerate(
            run.parts("prompts", cfg.part_size)
        ):  # streamed: one part's prompts and candidates
            cands = candidates.filter(pl.col("prompt_id").is_in(part["prompt_id"])).collect()
            p_texts, c_texts = [prompt_text(m) for m in part["messages"].to_list()], cands["text"].to_list()
            vecs = embed_texts(
                p_texts + c_texts, model, run.path, batch_size=cfg.batch_size, device=cfg.device, ray=cfg.ray, tick=tick
            )
            p_vecs, c_vecs = vecs[: len(p_texts)], vecs[len(p_texts) :]
            p_ids, c_ids = part["prompt_id"].to_list(), cands["candidate_id"].to_list()
            keys.append("rows")
            vectors.write(
                index,
                "rows",
                pl.concat(
                    [vectors_frame(p_ids, "prompt", model, p_vecs)]
                    + ([vectors_frame(c_ids, "candidate", model, c_vecs)] if c_ids else [])
                ),
            )
            row_of = {pid: i for i, pid in enumerate(p_ids)}
            c_prompts = cands["prompt_id"].to_list()
            rel = relevance(p_vecs[[row_of[p] for p in c_prompts]], c_vecs) if c_ids else np.zeros(0)
            near = near_identical(c_prompts, c_vecs, cfg.near_identical) if c_ids else []
            scores.write(
                index,
                "rows",
                pl.DataFrame(
                    {
                        "candidate_id": c_ids,
                        "relevance": rel.astype(np.float64),
                        "near_identical_to": [c_ids[t] if t is not None else None for t in near],
                    },
                    schema=TABLES["candidate_scores"],
                ),
            )
            relevance_sum, twins = relevance_sum + float(rel.sum()), twins + sum(t is not None for t in near)
            active_rows = active_prompts(part.with_row_index("i"))["i"].to_list()
            active = p_vecs[active_rows].astype(np.float64)
            if len(p_vecs):
                gram = (gram if gram is not None else 0) + active.T @ active
                n_active += len(active)
    vectors.assemble(keys)
    if n_candidates:
        scores.assemble(keys)
    else:
        scores.clear()
    counts: dict = {"prompts": n_prompts, "candidates": n_candidates}
    if n_candidates:
        counts.update(mean_relevance=round(relevance_sum / n_candidates, 4), near_identical=twins)
    counts["vendi_score"] = round(vendi_from_gram(gram, n_active), 3) if gram is not None else 0.0
    active = active_prompts(run.scan("prompts")).select("prompt_id", "cluster")
    generated = active.join(candidates.select("prompt_id").unique(), on="prompt_id", how="semi")
    counts.update(
        cluster_stats(active.select("cluster").collect().to_series(), generated.select("cluster").collect().to_series())
    )
    summary("embed", counts)
    return counts


STAGE = Stage(name="embed", order=50, step=step, section="embed", settings=EmbedConfig, inputs=local_embedder)
