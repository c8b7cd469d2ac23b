"""`prefab push`: the pairs routed to humans, as records of an Argilla dataset.

Records go to the REST bulk-upsert endpoint as plain JSON, one batch of 256 at a time. Measured on the
embedded server (SQLite): the server's per-record validation dominates; a batch of 500 (its maximum)
costs more per record than two of 256, and two batches in flight only queue on SQLite's write lock.
Against the SDK's `records.log` (bench/bench_push.py) this path saves the client's share: no SDK
objects to build and validate, and the records the server echoes back are not parsed into SDK objects.
The record's external id is the pair id, so pushing again updates records and never duplicates them.
Transient failures (connection errors, 429, 5xx) are retried with exponential backoff; upserts are
idempotent, so a retried batch cannot duplicate anything.
"""

import os
import random
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import httpx
import polars as pl
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from labeling.dataset import build_records, prompt_vectors, settings
from labeling.launcher import accounts, bootstrap, lifecycle
from labeling.queue import budget_info, plan
from labeling.settings import LabelingConfig, labeling_target
from pipeline.core.config import Config
from pipeline.core.errors import LabelingError
from pipeline.core.progress import progress_bar, summary
from pipeline.core.schema import TABLES
from pipeline.core.stage import Stage
from pipeline.core.store import Run, candidate_id, content_id, pair_id, prompt_id
from pipeline.stages.embed import embed_texts, prompt_text
from pipeline.stages.pair import is_verified

BATCH = 256  # the server takes up to 500, but per record a 500 batch is slower (see above)
BATCH_TIMEOUT = 600  # seconds: a batch takes the embedded server 5-20 s on a busy 2-core machine
ATTEMPTS = 5
PAGE = 1000  # records per page when reading a dataset back
DELETE_BATCH = 100  # argilla-server's most ids per DELETE /datasets/{id}/records


def _transient(e: BaseException) -> bool:
    if isinstance(e, httpx.TransportError):
        return True
    return isinstance(e, httpx.HTTPStatusError) and (e.response.status_code == 429 or e.response.status_code >= 500)


@retry(
    retry=retry_if_exception(_transient),
    stop=stop_after_attempt(ATTEMPTS),
    wait=wait_exponential(0.5, max=8),
    reraise=True,
)
def _send(fn) -> httpx.Response:
    response = fn()
    response.raise_for_status()
    return response


def call(fn) -> httpx.Response:
    """Run one HTTP call (fn returns an httpx.Response) with retries; errors become LabelingError."""
    try:
        return _send(fn)
    except httpx.TransportError as e:
        raise LabelingError(
            f"cannot reach the Argilla server: {e}",
            hint="start it with `prefab labeling up` (or set ARGILLA_API_URL and ARGILLA_API_KEY)",
        ) from e
    except httpx.HTTPStatusError as e:
        detail = e.response.text[:500]
        raise LabelingError(
            f"Argilla answered {e.response.status_code} to {e.request.method} {e.request.url.path}: {detail}",
            hint="check the server log: prefab labeling logs",
        ) from e


@contextmanager
def server_errors():
    """Whatever SDK or HTTP call finds the server gone (down, killed, restarting) ends as a clear LabelingError."""
    try:
        yield
    except LabelingError:
        raise
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, (httpx.TransportError, ConnectionError)):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise LabelingError(
            f"lost the Argilla server: {type(cause).__name__}: {cause}",
            hint="check it with `prefab labeling status`, start it with `prefab labeling up`, then run the "
            "same command again: what was already sent is updated, never duplicated",
        ) from e


def connect(run: Run | None = None):
    """The argilla.Argilla client for the configured server, with a clear error when it is down. With a run: the
    embedded server it pushed to (its home is in the manifest, never its key), unless the environment names one."""
    with server_errors():
        return accounts.client(server_home(run))


def server_home(run: Run | None) -> Path | None:
    """The labeling home a run pushed to, when the environment names none and that home still exists."""
    if (
        run is None
        or os.environ.get("PREFAB_LABELING_HOME")
        or os.environ.get("PREFAB_HOME")
        or os.environ.get("ARGILLA_API_URL")
    ):
        return None
    home = run.stage_info("push").get("labeling_home")
    return Path(home) if home and (Path(home) / "server.json").exists() else None


def server_address(client) -> dict:
    """Where the run's labels live, for later commands: the server's URL and, when embedded, its home."""
    return {"url": client.api_url} | (
        {} if bootstrap.external() else {"labeling_home": str(bootstrap.default_home().resolve())}
    )


def dataset_name(config: Config, run: Run) -> str:
    return (config.labeling and config.labeling.dataset) or run.path.resolve().name


def find_dataset(client, name: str, workspace: str):
    """The dataset, or None; the SDK raises rather than answering None when the workspace is missing."""
    if client.workspaces(name=workspace) is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK warns when the dataset is not there: that is an answer here
        return client.datasets(name=name, workspace=workspace)


def ensure_workspace(client, name: str):
    import argilla as rg  # start-up: argilla

    workspace = client.workspaces(name=name)
    if workspace is None:
        workspace = rg.Workspace(name=name, client=client).create()
    return workspace


def ensure_dataset(client, name: str, workspace: str, wanted):
    """Reuse the dataset when its fields and questions match; create it otherwise. Returns (dataset, created)."""
    import argilla as rg  # start-up: argilla

    ensure_workspace(client, workspace)
    dataset = find_dataset(client, name, workspace)
    if dataset is not None and dataset.api_model().status != "ready":
        dataset.delete()  # a creation cut short (server lost): a draft holds no records, so make it again
        dataset = None
    if dataset is None:
        return rg.Dataset(name=name, workspace=workspace, settings=wanted, client=client).create(), True
    have = dataset.settings
    for kind in ("fields", "questions"):
        names = sorted(x.name for x in getattr(have, kind))
        expected = sorted(x.name for x in getattr(wanted, kind))
        if names != expected:
            raise LabelingError(
                f"Argilla dataset {name!r} in workspace {workspace!r} has {kind} {names}, not {expected}",
                hint="it was made by something else: set labeling.dataset to another name in the config",
            )
    if have.guidelines != wanted.guidelines:
        have.guidelines = wanted.guidelines
        dataset.update()
    if have.distribution.min_submitted != wanted.distribution.min_submitted:
        # argilla-server 2.8 takes a new distribution also once there are responses, and recomputes each record's status
        call(
            lambda: client.api.http_client.patch(
                f"/api/v1/datasets/{dataset.id}",
                json={"distribution": {"strategy": "overlap", "min_submitted": wanted.distribution.min_submitted}},
            )
        )
        dataset = find_dataset(client, name, workspace)
    return dataset, False


def fetch_records(client, dataset, responses: bool = True) -> list[dict]:
    """Every record of the dataset (with its responses unless told otherwise), as the REST API returns them."""
    items, offset = [], 0
    include = {"include": ["responses"]} if responses else {}
    while True:
        page = call(
            lambda offset=offset: client.api.http_client.get(
                f"/api/v1/datasets/{dataset.id}/records", params={**include, "offset": offset, "limit": PAGE}
            )
        )
        batch = page.json()["items"]
        items += batch
        offset += len(batch)
        if len(batch) < PAGE:
            return items


def usernames(client) -> dict[str, str]:
    return {u["id"]: u["username"] for u in call(lambda: client.api.http_client.get("/api/v1/users")).json()["items"]}


def record_count(client, dataset) -> int:
    return call(
        lambda: client.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={"limit": 1})
    ).json()["total"]


def upsert(client, dataset, records: list[dict], advance=lambda n: None) -> int:
    """Bulk-upsert records (suggestions named by question); returns how many were new.

    The server does not say which items it updated (its response model drops `updated_item_ids`),
    so the count of new records is the growth of the dataset's total.
    """
    question_ids = {q.name: str(q.id) for q in dataset.settings.questions}
    vector_names = {v.name for v in dataset.settings.vectors}
    for record in records:
        for s in record["suggestions"]:
            s["question_id"] = question_ids[s.pop("question_name")]
        if "vectors" in record:
            record["vectors"] = {k: v for k, v in record["vectors"].items() if k in vector_names}
    url = f"/api/v1/datasets/{dataset.id}/records/bulk"
    http = client.api.http_client

    before = record_count(client, dataset)
    for i in range(0, len(records), BATCH):
        batch = records[i : i + BATCH]
        call(lambda batch=batch: http.put(url, json={"items": batch}, timeout=BATCH_TIMEOUT))
        advance(len(batch))
    return record_count(client, dataset) - before


# ---------------------------------------------------------------- gold pairs in the annotators' queue


def gold_candidate_id(gold_id: str, side: str) -> str:
    return candidate_id("gold:" + gold_id, "gold", {}, 0 if side == "chosen" else 1)


def gold_record_id(gold_id: str) -> str:
    """The record id of a gold pair: made as a pair id is, so nothing in it tells gold from the rest."""
    return pair_id(gold_candidate_id(gold_id, "chosen"), gold_candidate_id(gold_id, "rejected"))


def gold_mapping(gold: pl.DataFrame) -> dict[str, dict]:
    """record id -> {gold_id, chosen_id, rejected_id}, chosen being the response people preferred."""
    return {
        gold_record_id(g): {
            "gold_id": g,
            "chosen_id": gold_candidate_id(g, "chosen"),
            "rejected_id": gold_candidate_id(g, "rejected"),
        }
        for g in gold["gold_id"].to_list()
    }


def gold_count(n_pairs: int, share: float, available: int) -> int:
    """Gold records to add so that they are `share` of the dataset."""
    if share <= 0 or n_pairs == 0 or available == 0:
        return 0
    return min(available, max(1, round(n_pairs * share / (1 - share))))


def gold_frames(
    run: Run,
    gold: pl.DataFrame,
    selected: pl.DataFrame,
    prompts: pl.DataFrame,
    candidates: pl.DataFrame,
    n: int,
    seed: int,
):
    """Gold pairs dressed as the run's pairs: (pairs, prompts, candidates, pair_judgments) rows to push with them.

    Each is oriented by the judges' scores as a run pair is (so its hidden margin is a real, non-negative one),
    and takes a cluster, generators and routing reason drawn from the pairs it is mixed with; the people's
    answer stays in the run.
    """
    gold = gold.sort(
        pl.col("gold_id").map_elements(lambda g: content_id("gold-pick", seed, g), return_dtype=pl.String)
    ).head(n)
    judged = run.read_or_empty("gold_judgments")
    scores = judged.group_by("gold_id").agg(pl.col("chosen_score").mean(), pl.col("rejected_score").mean())
    scores = {g: (c, r) for g, c, r in scores.iter_rows()}
    verdicts: dict[str, list[dict]] = {}
    for j in judged.iter_rows(named=True):
        verdicts.setdefault(j["gold_id"], []).append(j)
    cluster_of = dict(zip(prompts["prompt_id"].to_list(), prompts["cluster"].to_list(), strict=True))
    clusters = [cluster_of.get(p) for p in selected["prompt_id"].to_list()] or [None]
    models = candidates.filter(
        pl.col("candidate_id").is_in(selected["chosen_id"].to_list() + selected["rejected_id"].to_list())
    )["model"].to_list() or ["gold"]
    reasons = selected["route_reason"].drop_nulls().to_list() or ["below_target"]
    margins = selected["margin"].drop_nulls().to_list() or [
        None
    ]  # for gold no judge scored: a record without one would stand out
    strategy = selected["strategy"][0] if selected.height else "best_vs_worst"
    pair_rows, prompt_rows, cand_rows, judgment_rows = [], [], [], []
    for g in gold.iter_rows(named=True):
        rng = random.Random(content_id("gold-dress", seed, g["gold_id"]))
        good, bad = gold_candidate_id(g["gold_id"], "chosen"), gold_candidate_id(g["gold_id"], "rejected")
        c, r = scores.get(g["gold_id"], (None, None))
        flipped = c is not None and r is not None and r > c
        first, second = (bad, good) if flipped else (good, bad)
        pid = prompt_id(g["messages"])
        pair_rows.append(
            {
                "pair_id": gold_record_id(g["gold_id"]),
                "prompt_id": pid,
                "chosen_id": first,
                "rejected_id": second,
                "chosen_score": r if flipped else c,
                "rejected_score": c if flipped else r,
                "margin": abs(c - r) if c is not None and r is not None else rng.choice(margins),
                "similarity": None,
                "strategy": strategy,
                "route": "human",
                "route_reason": rng.choice(reasons),
                "confidence": None,
            }
        )
        prompt_rows.append({"prompt_id": pid, "messages": g["messages"], "cluster": rng.choice(clusters)})
        cand_rows += [
            {"candidate_id": good, "text": g["chosen"], "model": rng.choice(models)},
            {"candidate_id": bad, "text": g["rejected"], "model": rng.choice(models)},
        ]
        for j in verdicts.get(g["gold_id"], []):
            swap = {"chosen": "rejected", "rejected": "chosen", "tie": "tie"} if flipped else {}
            ab, ba = (j["verdict_ba"], j["verdict_ab"]) if flipped else (j["verdict_ab"], j["verdict_ba"])
            ab, ba = swap.get(ab, ab), swap.get(ba, ba)
            judgment_rows.append(
                {
                    "pair_id": gold_record_id(g["gold_id"]),
                    "judge": j["judge"],
                    "verdict_ab": ab,
                    "verdict_ba": ba,
                    "consistent": (ab == ba) if ab and ba else None,
                    "confidence": None,
                    "raw": None,
                    "error": None,
                    "p_chosen_ab": None,
                    "p_chosen_ba": None,
                }
            )
    return (
        pl.DataFrame(pair_rows, schema=TABLES["pairs"]),
        pl.DataFrame(
            prompt_rows, schema={"prompt_id": pl.String, "messages": TABLES["prompts"]["messages"], "cluster": pl.Int32}
        ),
        pl.DataFrame(cand_rows, schema={"candidate_id": pl.String, "text": pl.String, "model": pl.String}),
        pl.DataFrame(judgment_rows, schema=TABLES["pair_judgments"]),
    )


def to_push(pairs: pl.DataFrame, labeling: LabelingConfig) -> pl.DataFrame:
    """The pairs of the configured routes, less the verified ones (a correct final answer against an incorrect one):
    they need no person, even when `routes` includes auto."""
    return pairs.filter(pl.col("route").is_in(labeling.routes) & ~is_verified())


def queue_plan(
    config: Config,
    pairs: pl.DataFrame,
    labels: pl.DataFrame,
    resolved: pl.DataFrame,
    annotators: pl.DataFrame,
    on_server: set[str],
) -> pl.DataFrame:
    """The queue (labeling/queue.py) for the run's human pairs, from its labels, their resolution and the annotators'
    estimated accuracy (an annotator without an estimate counts at the prior's)."""
    labeling = config.labeling or LabelingConfig()
    accuracy = {
        a: r if r is not None else labeling.prior_accuracy
        for a, r in annotators.select("annotator", "reliability").iter_rows()
    }
    return plan(
        to_push(pairs, labeling).select("pair_id", "confidence"),
        resolved,
        labels,
        on_server,
        target=labeling_target(config),
        max_labels=labeling.max_labels_per_pair,
        budget=labeling.label_budget,
        accuracy=accuracy,
        newcomer=labeling.prior_accuracy,
    )


def add_pairs(run: Run, config: Config, client, dataset, pair_ids: list[str]) -> int:
    """Upsert the records of these run pairs (no gold) into the dataset; returns how many were new."""
    pairs = run.read("pairs").filter(pl.col("pair_id").is_in(pair_ids))
    vectors, _ = prompt_vectors(run.read_or_empty("embeddings"), config.embed.model if config.embed else None)
    records = build_records(
        pairs,
        run.read("prompts"),
        run.read("candidates"),
        pair_judgments=run.read_or_empty("pair_judgments"),
        vectors=vectors,
        config=config,
    )
    return upsert(client, dataset, records)


def push(run: Run, config: Config, client) -> dict:
    """Push the pairs of the configured routes (human by default), with gold pairs mixed in, to the run's Argilla
    dataset.

    With adaptive redundancy, only the pairs the queue holds (all of them, unless a label budget limits it)."""
    labeling = config.labeling or LabelingConfig()
    pairs = run.read("pairs")
    selected = to_push(pairs, labeling)
    routed = selected.height
    embeddings = run.read_or_empty("embeddings")
    embed_model = config.embed.model if config.embed else None
    vectors, dims = prompt_vectors(embeddings, embed_model)
    name = dataset_name(config, run)
    dataset, created = ensure_dataset(client, name, labeling.workspace, settings(labeling, dims, client))
    queue = None
    if labeling.redundancy == "adaptive":
        on_server = set() if created else {r["external_id"] for r in fetch_records(client, dataset, responses=False)}
        queue = queue_plan(
            config,
            pairs,
            run.read_or_empty("labels"),
            run.read_or_empty("resolved"),
            run.read_or_empty("annotators"),
            on_server,
        )
        selected = selected.filter(
            pl.col("pair_id").is_in(queue.filter(pl.col("state") == "queued")["pair_id"].implode())
        )
    prompts, candidates = run.read("prompts"), run.read("candidates")
    pair_judgments = run.read_or_empty("pair_judgments")
    gold = run.read_or_empty("gold")
    n_gold = gold_count(selected.height, labeling.gold_share, gold.height)
    if n_gold:
        g_pairs, g_prompts, g_cands, g_judgments = gold_frames(
            run, gold, selected, prompts, candidates, n_gold, config.seed
        )
        if vectors:  # every record has a prompt vector, or none has: a missing one would single gold out
            model = embed_model or embeddings["model"][0]
            found = embed_texts(
                [prompt_text(m) for m in g_prompts["messages"].to_list()],
                model,
                run.path,
                description="embed gold prompts",
            )
            if found.shape[1] != dims:
                raise LabelingError(
                    f"gold prompts embed to {found.shape[1]} dimensions with {model}, "
                    f"the run's prompt vectors have {dims}",
                    hint="re-run `prefab embed` so that the run's vectors come from its configured model",
                )
            vectors |= dict(zip(g_prompts["prompt_id"].to_list(), found.tolist(), strict=True))
        selected = pl.concat([selected, g_pairs])
        prompts = pl.concat([prompts.select(g_prompts.columns), g_prompts])
        candidates = pl.concat([candidates.select(g_cands.columns), g_cands])
        pair_judgments = pl.concat([pair_judgments, g_judgments])
    records = build_records(
        selected, prompts, candidates, pair_judgments=pair_judgments, vectors=vectors, config=config
    )
    records.sort(key=lambda r: content_id("push-order", r["external_id"]))  # gold mixed into every batch, not appended
    with progress_bar(f"push to Argilla {name}", len(records)) as advance:
        new = upsert(client, dataset, records, advance)
    counts = {
        "dataset": name,
        "workspace": labeling.workspace,
        "dataset_id": str(dataset.id),
        "dataset_created": created,
        "pushed": len(records),
        "gold_pushed": n_gold,
        "created": new,
        "updated": len(records) - new,
        "not_pushed": pairs.height - (selected.height - n_gold),
        "routes": ",".join(labeling.routes),
        "judge_hint": labeling.judge_hint,
        "redundancy": labeling.redundancy,
        **server_address(client),
    }
    if queue is not None:
        run.write("queue", queue)
        counts |= {"held_back": routed - (selected.height - n_gold)} | budget_info(queue, labeling.label_budget)
    summary(
        "push",
        {k: ("yes" if v else "no") if isinstance(v, bool) else v for k, v in counts.items() if k != "dataset_id"},
    )
    return counts


def step(config: Config, run: Run, **options) -> dict:
    with server_errors():
        return push(run, config, connect(run))


def prefab_command() -> str:
    """`prefab` when that is this environment's on PATH, else its path (relative to here when inside it)."""
    mine = Path(sys.executable).parent / "prefab"
    found = shutil.which("prefab")
    if found and Path(found).resolve() == mine.resolve():
        return "prefab"
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


def demo_instructions(
    run_dir: str,
    *,
    url: str | None = None,
    annotators: list[tuple[str, str]] | None = None,
    dataset: str | None = None,
    workspace: str | None = None,
) -> str:
    """What to do after `make demo`: label in the browser, then pull and export.

    Whatever is not given comes from the running server (URL), the demo accounts and the run's manifest
    (dataset and workspace the push used), so the Makefile needs only the run directory:
        python -c "from labeling.push import demo_instructions; print(demo_instructions('runs/demo'))"
    """
    push_info = Run(run_dir).stage_info("push")
    url = url or lifecycle.status().get("url") or "http://127.0.0.1:6900"
    annotators = accounts.DEMO_ANNOTATORS if annotators is None else annotators
    dataset = dataset or push_info.get("dataset") or Path(run_dir).name
    workspace = workspace or push_info.get("workspace") or "prefab"
    pushed = push_info.get("pushed")
    gold = push_info.get("gold_pushed") or 0
    what = f"{pushed - gold} human-routed pairs" + (
        f" and {gold} gold pairs (unmarked: they measure the annotators)" if gold else ""
    )
    prefab = prefab_command()
    logins = (
        "\n".join(f"       {user} / {password}" for user, password in annotators)
        or f"       (add one: {prefab} labeling users add NAME --role annotator --workspace prefab)"
    )
    return (
        f"The labeling server is running{f' and {what} are in Argilla' if pushed is not None else ''}.\n"
        f"  1. Open {url} in a browser.\n"
        f"  2. Log in as an annotator (user / password):\n{logins}\n"
        f"  3. Open dataset {dataset!r} (workspace {workspace!r}), read the guidelines, and for each pair pick\n"
        f"     which response is better (A, B, tie, or both bad), then Submit.\n"
        f"  4. Bring the labels back, mapped to chosen/rejected, with agreement statistics:\n"
        f"       {prefab} pull --run {run_dir}            (add --watch to keep pulling as labels arrive)\n"
        f"     A pair still below the target confidence stays in the queue for another annotator (never the one who\n"
        f"     labeled it); a settled one leaves it. What each pair still needs: {prefab} status --run {run_dir}\n"
        f"  5. Export the preference data for training:\n"
        f"       {prefab} export --run {run_dir}\n"
        f"  Stop the server with: {prefab} labeling down\n"
        + (
            f"  ({prefab} is this project's; `source {Path(prefab).parent}/activate` puts `prefab` on PATH)\n"
            if prefab != "prefab"
            else ""
        )
    )


STAGE = Stage(name="push", order=90, step=step, section="labeling", settings=LabelingConfig)
