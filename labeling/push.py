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

import warnings
from contextlib import contextmanager
from pathlib import Path

import httpx
import polars as pl
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from labeling.dataset import build_records, prompt_vectors, settings
from pipeline.config import Config, LabelingConfig
from pipeline.errors import LabelingError
from pipeline.progress import progress_bar, summary
from pipeline.store import Run

BATCH = 256  # the server takes up to 500, but per record a 500 batch is slower (see above)
BATCH_TIMEOUT = 600  # seconds: a batch takes the embedded server 5-20 s on a busy 2-core machine
ATTEMPTS = 5


def _transient(e: BaseException) -> bool:
    if isinstance(e, httpx.TransportError):
        return True
    return isinstance(e, httpx.HTTPStatusError) and (e.response.status_code == 429 or e.response.status_code >= 500)


@retry(retry=retry_if_exception(_transient), stop=stop_after_attempt(ATTEMPTS), wait=wait_exponential(0.5, max=8), reraise=True)
def _send(fn) -> httpx.Response:
    response = fn()
    response.raise_for_status()
    return response


def call(fn) -> httpx.Response:
    """Run one HTTP call (fn returns an httpx.Response) with retries; errors become LabelingError."""
    try:
        return _send(fn)
    except httpx.TransportError as e:
        raise LabelingError(f"cannot reach the Argilla server: {e}",
                            hint="start it with `prefab labeling up` (or set ARGILLA_API_URL and ARGILLA_API_KEY)") from e
    except httpx.HTTPStatusError as e:
        detail = e.response.text[:500]
        raise LabelingError(f"Argilla answered {e.response.status_code} to {e.request.method} {e.request.url.path}: {detail}",
                            hint="check the server log: prefab labeling logs") from e


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
        raise LabelingError(f"lost the Argilla server: {type(cause).__name__}: {cause}",
                            hint="check it with `prefab labeling status`, start it with `prefab labeling up`, then run the "
                                 "same command again: what was already sent is updated, never duplicated") from e


def connect():
    """The argilla.Argilla client for the configured server, with a clear error when it is down."""
    from labeling.server import client

    with server_errors():
        return client()


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
    import argilla as rg

    workspace = client.workspaces(name=name)
    if workspace is None:
        workspace = rg.Workspace(name=name, client=client).create()
    return workspace


def ensure_dataset(client, name: str, workspace: str, wanted):
    """Reuse the dataset when its fields and questions match; create it otherwise. Returns (dataset, created)."""
    import argilla as rg

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
            raise LabelingError(f"Argilla dataset {name!r} in workspace {workspace!r} has {kind} {names}, not {expected}",
                                hint="it was made by something else: set labeling.dataset to another name in the config")
    if have.guidelines != wanted.guidelines:
        have.guidelines = wanted.guidelines
        dataset.update()
    return dataset, False


def record_count(client, dataset) -> int:
    return call(lambda: client.api.http_client.get(f"/api/v1/datasets/{dataset.id}/records", params={"limit": 1})).json()["total"]


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
        batch = records[i:i + BATCH]
        call(lambda: http.put(url, json={"items": batch}, timeout=BATCH_TIMEOUT))
        advance(len(batch))
    return record_count(client, dataset) - before


def push(run: Run, config: Config, client) -> dict:
    """Push the pairs of the configured routes (human by default) to the run's Argilla dataset."""
    labeling = config.labeling or LabelingConfig()
    pairs = run.read("pairs")
    selected = pairs.filter(pl.col("route").is_in(labeling.routes))
    embeddings = run.read_or_empty("embeddings")
    vectors, dims = prompt_vectors(embeddings, config.embed.model if config.embed else None)
    name = dataset_name(config, run)
    dataset, created = ensure_dataset(client, name, labeling.workspace, settings(labeling, dims, client))
    records = build_records(selected, run.read("prompts"), run.read("candidates"), pair_judgments=run.read_or_empty("pair_judgments"),
                            vectors=vectors, config=config)
    with progress_bar(f"push to Argilla {name}", len(records)) as advance:
        new = upsert(client, dataset, records, advance)
    counts = {"dataset": name, "workspace": labeling.workspace, "dataset_id": str(dataset.id), "dataset_created": created,
              "pushed": len(records), "created": new, "updated": len(records) - new,
              "not_pushed": pairs.height - selected.height, "routes": ",".join(labeling.routes),
              "suggestions": labeling.suggestions}
    summary("push", {k: ("yes" if v else "no") if isinstance(v, bool) else v for k, v in counts.items() if k != "dataset_id"})
    return counts


def step(config: Config, run: Run, **options) -> dict:
    with server_errors():
        return push(run, config, connect())


def demo_instructions(run_dir: str, *, url: str | None = None, annotators: list[tuple[str, str]] | None = None,
                      dataset: str | None = None, workspace: str | None = None) -> str:
    """What to do after `make demo`: label in the browser, then pull and export.

    Whatever is not given comes from the running server (URL), the demo accounts and the run's manifest
    (dataset and workspace the push used), so the Makefile needs only the run directory:
        python -c "from labeling.push import demo_instructions; print(demo_instructions('runs/demo'))"
    """
    from labeling import server

    push_info = Run(run_dir).stage_info("push")
    url = url or server.status().get("url") or "http://127.0.0.1:6900"
    annotators = server.DEMO_ANNOTATORS if annotators is None else annotators
    dataset = dataset or push_info.get("dataset") or Path(run_dir).name
    workspace = workspace or push_info.get("workspace") or "prefab"
    pushed = push_info.get("pushed")
    logins = "\n".join(f"       {user} / {password}" for user, password in annotators) \
        or "       (add one: prefab labeling users add NAME --role annotator --workspace prefab)"
    return (
        f"The labeling server is running{f' and {pushed} human-routed pairs are in Argilla' if pushed is not None else ''}.\n"
        f"  1. Open {url} in a browser.\n"
        f"  2. Log in as an annotator (user / password):\n{logins}\n"
        f"  3. Open dataset {dataset!r} (workspace {workspace!r}), read the guidelines, and for each pair pick\n"
        f"     which response is better (A, B, tie, or both bad), then Submit.\n"
        f"  4. Bring the labels back, mapped to chosen/rejected, with agreement statistics:\n"
        f"       prefab pull --run {run_dir}            (add --watch to keep pulling as labels arrive)\n"
        f"  5. Export the preference data for training:\n"
        f"       prefab export --run {run_dir}\n"
        f"  Stop the server with: prefab labeling down\n"
    )
