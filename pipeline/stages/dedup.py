"""Dedup and topic clusters of prompts, before generation: nothing is paid for twice, no topic dominates.

- exact duplicates: same user text after case and whitespace folding;
- semantic near-duplicates: cosine above `threshold`, found by a faiss range search (exact flat index up
  to FLAT_MAX prompts, an inverted-file index with fixed-size cells beyond), never an n x n matrix;
  the first prompt in input order is kept, later ones point to it in `duplicate_of`;
- k-means topic clusters (scikit-learn, k-means++) on the prompt vectors, written to `cluster`;
- cluster-balanced sampling: `max_per_cluster` caps each topic, `target_size` water-fills the clusters.

Nothing disappears: a dropped prompt keeps its row with `excluded_reason` (and `duplicate_of` for copies).
Later stages read `pipeline.core.queries.active_prompts(prompts)`.
"""

import numpy as np
import polars as pl

from pipeline.core.config import Config, DedupConfig
from pipeline.core.errors import ConfigError
from pipeline.core.progress import summary
from pipeline.core.queries import active_prompts
from pipeline.core.stage import Stage
from pipeline.core.store import Run
from pipeline.stages.embed import embed_model, embed_texts, local_embedder, prompt_text

OWN_REASONS = ("duplicate", "near_duplicate", "max_per_cluster", "target_size")
FLAT_MAX = 5_000  # up to here an exact flat index is fast enough
CELL = 64  # vectors per inverted list
NPROBE = 4  # lists searched per query: near-duplicates (cos >= 0.9) almost always share a list
TRAIN_SAMPLE = 25_000
QUERY_BATCH = 8192


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def exact_duplicates(texts: list[str]) -> list[int | None]:
    """Index of the first row with the same folded text, or None for first occurrences."""
    first: dict[str, int] = {}
    out: list[int | None] = []
    for i, t in enumerate(texts):
        key = _fold(t)
        out.append(first.get(key))
        first.setdefault(key, i)
    return out


def _index(vectors: np.ndarray, seed: int = 0):
    """Exact flat index for small n; beyond, an inverted file of ~CELL-vector lists with an HNSW coarse
    quantizer, trained on a fixed-size sample: building and searching grow about linearly with n."""
    import faiss  # start-up: faiss

    n, d = vectors.shape
    index: faiss.Index
    if n <= FLAT_MAX:
        index = faiss.IndexFlatIP(d)
    else:
        index = faiss.index_factory(d, f"IVF{n // CELL}_HNSW32,Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        ivf.cp.min_points_per_centroid = 1
        sample = np.random.default_rng(seed).choice(n, size=min(n, TRAIN_SAMPLE), replace=False)
        index.train(vectors[np.sort(sample)])
        ivf.nprobe = NPROBE
    index.add(vectors)
    return index


def near_duplicates(vectors: np.ndarray, threshold: float, seed: int = 0) -> np.ndarray:
    """For each row, the index of an earlier kept row with cosine >= threshold, or -1 when it is kept.

    Greedy in input order, so duplicate_of always names a kept prompt that is itself that close.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    parent = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return parent
    index = _index(vectors, seed)
    removed = np.zeros(n, dtype=bool)
    radius = float(np.nextafter(np.float32(threshold), np.float32(-1)))  # range_search keeps sim > radius
    for start in range(0, n, QUERY_BATCH):
        lims, _, ids = index.range_search(vectors[start : start + QUERY_BATCH], radius)
        for q in range(len(lims) - 1):
            i = start + q
            if removed[i]:
                continue
            hits = ids[lims[q] : lims[q + 1]]
            hits = hits[(hits > i)]
            hits = hits[~removed[hits]]
            removed[hits] = True
            parent[hits] = i
    return parent


def kmeans(vectors: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cluster id per row, unit centroids), 0 the largest cluster. scikit-learn's k-means++ with a few
    restarts: a single random start (faiss) splits small topic sets badly."""
    from sklearn.cluster import KMeans  # start-up: sklearn

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(k, len(vectors))
    if k <= 1:
        centroid = vectors.mean(axis=0, keepdims=True)
        return np.zeros(len(vectors), dtype=np.int64), centroid / max(float(np.linalg.norm(centroid)), 1e-12)
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(vectors)
    assign = km.labels_.astype(np.int64)
    order = np.argsort(-np.bincount(assign, minlength=k), kind="stable")  # relabel by size
    relabel = np.empty(k, dtype=np.int64)
    relabel[order] = np.arange(k)
    centroids = km.cluster_centers_[order].astype(np.float32)
    return relabel[assign], centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)


def balanced_quota(sizes: dict[int, int], target: int) -> dict[int, int]:
    """Water-filling: every cluster gets the same share of `target`, small ones keep all they have."""
    quota = {c: 0 for c in sizes}
    left = min(target, sum(sizes.values()))
    open_ = sorted(sizes, key=lambda c: (sizes[c], c))
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for c in list(open_):
            take = min(share, sizes[c] - quota[c], left)
            quota[c] += take
            left -= take
            if quota[c] == sizes[c]:
                open_.remove(c)
            if left == 0:
                break
    return quota


def sample_clusters(
    clusters: list[int], max_per_cluster: int | None, target_size: int | None, seed: int = 0
) -> list[str | None]:
    """excluded_reason per row (None = kept) after capping clusters; random but seeded within a cluster."""
    rng = np.random.default_rng(seed)
    members: dict[int, list[int]] = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    out: list[str | None] = [None] * len(clusters)
    for c in sorted(members):
        rows = members[c]
        members[c] = [rows[j] for j in rng.permutation(len(rows))]  # a seeded random order
    if max_per_cluster is not None:
        for c, rows in members.items():
            for i in rows[max_per_cluster:]:
                out[i] = "max_per_cluster"
            members[c] = rows[:max_per_cluster]
    if target_size is not None:
        quota = balanced_quota({c: len(r) for c, r in members.items()}, target_size)
        for c, rows in members.items():
            for i in rows[quota[c] :]:
                out[i] = "target_size"
    return out


def dedup_prompts(
    prompts: pl.DataFrame, vectors: np.ndarray | None, cfg, keep: frozenset = frozenset()
) -> pl.DataFrame:
    """The prompts with duplicate_of, cluster and excluded_reason filled (re-running gives the same result). Prompts
    whose source is in `keep` are deduplicated but never sampled out; they count towards target_size."""
    texts = [prompt_text(m) for m in prompts["messages"].to_list()]
    ids = prompts["prompt_id"].to_list()
    reasons = prompts["excluded_reason"].to_list()
    dup_of = prompts["duplicate_of"].to_list()
    # forget what an earlier dedup run decided; keep what another stage marked
    for i, r in enumerate(reasons):
        if r in OWN_REASONS:
            reasons[i], dup_of[i] = None, None
    free = [i for i in range(len(ids)) if dup_of[i] is None and reasons[i] is None]

    exact = exact_duplicates([texts[i] for i in free])
    for j, first in enumerate(exact):
        if first is not None:
            dup_of[free[j]], reasons[free[j]] = ids[free[first]], "duplicate"
    free = [i for i in free if dup_of[i] is None]

    if cfg.semantic and vectors is not None and free:
        parent = near_duplicates(vectors[free], cfg.threshold, cfg.seed)
        for j, p in enumerate(parent):
            if p >= 0:
                dup_of[free[j]], reasons[free[j]] = ids[free[p]], "near_duplicate"
        free = [i for i in free if dup_of[i] is None]

    cluster: list[int] | None = None  # each prompt's topic, where clustering ran
    if cfg.clusters and vectors is not None and free:
        import faiss  # start-up: faiss

        labels, centroids = kmeans(vectors[free], cfg.clusters, cfg.seed)
        # every prompt, copies included, gets the topic of its nearest centroid
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(centroids, dtype=np.float32))
        _, nearest = index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)
        cluster = nearest[:, 0].tolist()
        for j, i in enumerate(free):
            cluster[i] = int(labels[j])
    sources = prompts["source"].to_list()
    kept = sum(sources[i] in keep for i in free)
    free = [i for i in free if sources[i] not in keep]
    target = max(cfg.target_size - kept, 0) if cfg.target_size else None
    if cluster is not None and free:  # clustering ran (on a superset of these prompts)
        if cfg.max_per_cluster or cfg.target_size:
            sampled = sample_clusters([cluster[i] for i in free], cfg.max_per_cluster, target, cfg.seed)
            for j, r in enumerate(sampled):
                reasons[free[j]] = r
    elif cfg.target_size and free:  # no clusters: a plain seeded sample
        chosen = set(np.random.default_rng(cfg.seed).permutation(len(free))[:target].tolist())
        for j, i in enumerate(free):
            if j not in chosen:
                reasons[i] = "target_size"

    return prompts.with_columns(
        pl.Series("duplicate_of", dup_of, dtype=pl.String),
        pl.Series("cluster", cluster if cluster is not None else [None] * len(ids), dtype=pl.Int32),
        pl.Series("excluded_reason", reasons, dtype=pl.String),
    )


def step(config: Config, run: Run, **_) -> dict:
    cfg = config.require("dedup")
    prompts = run.read("prompts")
    if not cfg.enabled:
        return {"prompts": prompts.height, "active": active_prompts(prompts).height}
    vectors = None
    if cfg.semantic or cfg.clusters:
        texts = [prompt_text(m) for m in prompts["messages"].to_list()]
        cfg_embed = config.embed
        vectors = embed_texts(
            texts,
            embed_model(config),
            run.path,
            description="embed prompts",
            batch_size=cfg_embed.batch_size if cfg_embed else 64,
            device=cfg_embed.device if cfg_embed else None,
            ray=cfg_embed.ray if cfg_embed else None,
        )
    keep = frozenset(str(config.resolve(path)) for path in cfg.keep_sources)
    unknown = keep - set(prompts["source"].unique().to_list())
    if unknown:
        raise ConfigError(
            f"dedup.keep_sources names {', '.join(sorted(unknown))}, which no prompt of the run comes from",
            hint="use a path of ingest.paths; the run's sources: "
            f"{', '.join(sorted(prompts['source'].unique().to_list()))}",
        )
    out = run.write("prompts", dedup_prompts(prompts, vectors, cfg, keep))
    reasons = out["excluded_reason"].value_counts()
    counts = {"prompts": out.height, "active": active_prompts(out).height}
    counts.update({f"excluded_as_{r}": n for r, n in reasons.iter_rows() if r is not None})  # what each count counts
    if out["cluster"].null_count() < out.height:
        counts["clusters"] = out["cluster"].n_unique() - (1 if out["cluster"].null_count() else 0)
    summary("dedup", counts)
    return counts


def embedder_inputs(config: Config) -> dict[str, str]:
    """The local embedder's fingerprint where dedup embeds (semantic or clusters): retrained, the stage is stale."""
    cfg = config.dedup
    return local_embedder(config) if cfg is not None and cfg.enabled and (cfg.semantic or cfg.clusters) else {}


STAGE = Stage(name="dedup", order=20, step=step, section="dedup", settings=DedupConfig, inputs=embedder_inputs)
