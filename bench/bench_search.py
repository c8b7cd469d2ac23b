"""The embedded Argilla's search engine at size, and 20 annotators submitting at once.

A fresh server (own home, free loopback port) gets a 50,000-record dataset: 1,000 records through the
bulk API, the rest copies of those made with SQL in Argilla's own tables (the bulk API loads a few
hundred records/s on this machine, minutes for 50,000; the copies keep its row formats, with fresh ids
and margins). One annotator has submitted 5,000 of them (100 through the API,
the rest copied the same way, their records marked completed as Argilla does with min_submitted=1).
Timed over HTTP, as the UI calls them:
- the UI's record-search query (the annotator's pending queue, first page of 10 with responses and
  suggestions); the baseline is Argilla's own search-free listing of the same page (plain SQL, no engine);
- a filtered and sorted search (metadata range + suggestion agent, sorted by suggestion score), a text
  query, a similarity search with a filter, and the dataset progress, against the same baseline;
- 20 annotators at a human pace: each submits (POST /records/{id}/responses, the UI's submit) after a
  pause of 5-20 s, random, for BENCH_HUMAN_SECONDS (180); then the same 20 back to back, 1,000 responses
  at once. Every response is read back; p95 latency against a single annotator submitting alone.
BENCH_SEARCH_RECORDS changes the size, BENCH_SEARCH_DATABASE=sqlite the database.
"""

import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

N_RECORDS = int(os.environ.get("BENCH_SEARCH_RECORDS", "50000"))
N_SUBMITTED = N_RECORDS // 10
DATABASE = os.environ.get("BENCH_SEARCH_DATABASE", "postgresql")  # or sqlite
HUMAN_PAUSE_S = (5, 20)
HUMAN_SECONDS = float(os.environ.get("BENCH_HUMAN_SECONDS", "180"))
N_API = min(N_RECORDS, 1000)  # records loaded through the API; the rest are SQL copies of these
DIMS = 8
WORDS = "cats dogs birds fish trees rivers cities music code maths".split()
PENDING_QUEUE = {
    "query": {},
    "filters": {
        "and": [
            {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
            {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]},
        ]
    },
}
UI_PARAMS = [("include", "responses"), ("include", "suggestions"), ("offset", "0"), ("limit", "10")]


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]


def timed(call, repeat: int, warmup: int = 3) -> list[float]:
    """Milliseconds of `repeat` calls after `warmup` untimed ones; each call must answer 2xx."""
    out = []
    for i in range(warmup + repeat):
        started = time.perf_counter()
        response = call()
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        if i >= warmup:
            out.append(elapsed)
    return out


def login(url: str, username: str, password: str) -> httpx.Client:
    token = httpx.post(f"{url}/api/v1/token", data={"username": username, "password": password}, timeout=60)
    token.raise_for_status()
    return httpx.Client(
        base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token.json()['access_token']}"}, timeout=120
    )


def new_annotator(client, workspace: str) -> tuple[str, str]:
    import argilla as rg

    name, password = f"bench-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    user = rg.User(username=name, password=password, role="annotator", client=client).create()
    user.add_to_workspace(client.workspaces(workspace))
    return name, password


def make_dataset(client, workspace: str, name: str, n: int, http: httpx.Client) -> str:
    """A pair-like dataset of n records (fields, metadata, suggestions, vectors) loaded through the bulk API."""
    import argilla as rg

    settings = rg.Settings(
        fields=[rg.TextField(name="prompt"), rg.TextField(name="response_a"), rg.TextField(name="response_b")],
        questions=[rg.LabelQuestion(name="preference", labels=["a", "b", "tie", "both_bad"])],
        metadata=[
            rg.FloatMetadataProperty(name="margin"),
            rg.TermsMetadataProperty(name="cluster"),
            rg.IntegerMetadataProperty(name="length_diff"),
        ],
        vectors=[rg.VectorField(name="prompt_vector", dimensions=DIMS)],
        distribution=rg.TaskDistribution(min_submitted=1),
    )
    dataset = rg.Dataset(name=name, workspace=workspace, settings=settings, client=client).create()
    question = next(q["id"] for q in http.get(f"/datasets/{dataset.id}/questions").json()["items"])
    rng = random.Random(0)
    for start in range(0, n, 500):
        items = []
        for i in range(start, min(n, start + 500)):
            topic = WORDS[i % len(WORDS)]
            items.append(
                {
                    "external_id": f"pair-{i}",
                    "fields": {
                        "prompt": f"Question {i} about {topic} and {WORDS[(i * 7) % len(WORDS)]}",
                        "response_a": f"An answer about {topic} " * 20,
                        "response_b": f"Another answer {i} " * 20,
                    },
                    "metadata": {
                        "margin": rng.random(),
                        "cluster": f"c{i % 20}",
                        "length_diff": rng.randint(-500, 500),
                    },
                    "suggestions": [
                        {
                            "question_id": question,
                            "value": rng.choice(["a", "b", "tie"]),
                            "score": rng.random(),
                            "agent": rng.choice(["judge-1", "judge-2"]),
                        }
                    ],
                    "vectors": {"prompt_vector": [rng.uniform(-1, 1) for _ in range(DIMS)]},
                }
            )
        http.put(f"/datasets/{dataset.id}/records/bulk", json={"items": items}).raise_for_status()
    return str(dataset.id)


def grow_with_sql(db_path: str, dataset_id: str, target: int, annotator: str, submitted: int) -> None:
    """Copy the dataset's records (with suggestions and vectors) in SQL until it holds `target`, then give
    `annotator` submitted responses on `submitted` records, as copies of one it made through the API."""
    import sqlite3

    dataset = dataset_id.replace("-", "")
    with sqlite3.connect(db_path, timeout=60) as db:
        base = db.execute("SELECT count(*) FROM records WHERE dataset_id = ?", (dataset,)).fetchone()[0]
        copies = -(-target // base) - 1
        db.execute(
            "CREATE TEMP TABLE copy_map AS SELECT r.id AS old, lower(hex(randomblob(16))) AS new, k.value AS k, "
            "row_number() OVER () AS n FROM records r, json_each(?) k WHERE r.dataset_id = ?",
            (json.dumps(list(range(1, copies + 1))), dataset),
        )
        db.execute("DELETE FROM copy_map WHERE n > ?", (target - base,))
        db.execute(
            "INSERT INTO records (id, fields, external_id, dataset_id, inserted_at, updated_at, metadata, status) "
            "SELECT m.new, r.fields, r.external_id || '-' || m.k, r.dataset_id, r.inserted_at, r.updated_at, "
            "json_set(r.metadata, '$.margin', abs(random() % 100000) / 100000.0), 'pending' "
            "FROM records r JOIN copy_map m ON m.old = r.id"
        )
        for table, columns in (
            ("suggestions", "value, score, agent, type, question_id"),
            ("vectors", "value, vector_settings_id"),
        ):
            db.execute(
                f"INSERT INTO {table} (id, record_id, inserted_at, updated_at, {columns}) "
                "SELECT lower(hex(randomblob(16))), m.new, t.inserted_at, t.updated_at, "
                f"{', '.join('t.' + c.strip() for c in columns.split(','))} "
                f"FROM {table} t JOIN copy_map m ON m.old = t.record_id"
            )
        user = annotator.replace("-", "")
        db.execute(
            'INSERT INTO responses (id, "values", status, record_id, user_id, inserted_at, updated_at) '
            'SELECT lower(hex(randomblob(16))), x."values", x.status, r.id, x.user_id, x.inserted_at, x.updated_at '
            "FROM records r, (SELECT * FROM responses WHERE user_id = ? LIMIT 1) x "
            "WHERE r.dataset_id = ? AND r.status = 'pending' LIMIT ?",
            (
                user,
                dataset,
                max(
                    0, submitted - db.execute("SELECT count(*) FROM responses WHERE user_id = ?", (user,)).fetchone()[0]
                ),
            ),
        )
        db.execute(
            "UPDATE records SET status = 'completed' "
            "WHERE dataset_id = ? AND id IN (SELECT record_id FROM responses WHERE user_id = ?)",
            (dataset, user),
        )


PG_GROW = """
CREATE TEMP TABLE copy_map AS
  SELECT r.id AS old, gen_random_uuid() AS new, k, row_number() OVER () AS n
  FROM records r, generate_series(1, :copies) k WHERE r.dataset_id = :'dataset';
DELETE FROM copy_map WHERE n > :wanted;
INSERT INTO records (id, fields, external_id, dataset_id, inserted_at, updated_at, metadata, status)
  SELECT m.new, r.fields, r.external_id || '-' || m.k, r.dataset_id, r.inserted_at, r.updated_at,
         jsonb_set(r.metadata::jsonb, '{margin}', to_jsonb(random()))::json, 'pending'
  FROM records r JOIN copy_map m ON m.old = r.id;
INSERT INTO suggestions (id, record_id, inserted_at, updated_at, value, score, agent, type, question_id)
  SELECT gen_random_uuid(), m.new, t.inserted_at, t.updated_at, t.value, t.score, t.agent, t.type, t.question_id
  FROM suggestions t JOIN copy_map m ON m.old = t.record_id;
INSERT INTO vectors (id, record_id, inserted_at, updated_at, value, vector_settings_id)
  SELECT gen_random_uuid(), m.new, t.inserted_at, t.updated_at, t.value, t.vector_settings_id
  FROM vectors t JOIN copy_map m ON m.old = t.record_id;
INSERT INTO responses (id, "values", status, record_id, user_id, inserted_at, updated_at)
  SELECT gen_random_uuid(), x."values", x.status, r.id, x.user_id, x.inserted_at, x.updated_at
  FROM records r, (SELECT * FROM responses WHERE user_id = :'user' LIMIT 1) x
  WHERE r.dataset_id = :'dataset' AND r.status = 'pending'
  LIMIT greatest(0, :submitted - (SELECT count(*) FROM responses WHERE user_id = :'user'));
UPDATE records SET status = 'completed'
  WHERE dataset_id = :'dataset' AND id IN (SELECT record_id FROM responses WHERE user_id = :'user');
ANALYZE;
"""


def grow_with_psql(home: str, dataset_id: str, target: int, annotator: str, submitted: int) -> None:
    """grow_with_sql on the embedded PostgreSQL, through its psql."""
    import subprocess

    from labeling.launcher import lifecycle

    base = int(
        subprocess.run(
            [*lifecycle.psql(home), "-tAc", f"SELECT count(*) FROM records WHERE dataset_id = '{dataset_id}'"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    variables = {
        "copies": -(-target // base) - 1,
        "wanted": target - base,
        "dataset": dataset_id,
        "user": annotator,
        "submitted": submitted,
    }
    subprocess.run(
        [*lifecycle.psql(home), "-v", "ON_ERROR_STOP=1", *(f"-v{k}={v}" for k, v in variables.items())],
        input=PG_GROW,
        check=True,
        capture_output=True,
        text=True,
    )


def record_ids(http: httpx.Client, dataset_id: str, n: int) -> list[str]:
    ids = []
    while len(ids) < n:
        page = http.get(f"/datasets/{dataset_id}/records", params={"offset": len(ids), "limit": 1000}).json()["items"]
        if not page:
            break
        ids += [r["id"] for r in page]
    return ids[:n]


def load_test(
    url: str,
    owner_key: str,
    annotators: int = 20,
    records: int = 50,
    pause: tuple | None = None,
    duration_s: float | None = None,
) -> dict:
    """`annotators` users submit one response to each of `records` records, each in its own order: back to
    back (all at once), or at a human pace: a pause of `pause` seconds (uniform random: reading the next
    pair) before each submit, until `duration_s` has passed.

    Returns latencies (ms), HTTP errors, and what was read back: every (record, user) pair sent must hold
    the value that user sent.
    """
    import argilla as rg

    rg_client = rg.Argilla(api_url=url, api_key=owner_key)
    workspace = f"load-{uuid.uuid4().hex[:8]}"
    rg.Workspace(name=workspace, client=rg_client).create()
    with httpx.Client(base_url=f"{url}/api/v1", headers={"X-Argilla-Api-Key": owner_key}, timeout=120) as owner:
        dataset_id = make_dataset(rg_client, workspace, f"load-{uuid.uuid4().hex[:8]}", records, owner)
        ids = record_ids(owner, dataset_id, records)
        users = [new_annotator(rg_client, workspace) for _ in range(annotators)]
        sessions = [login(url, name, password) for name, password in users]
        values = {
            (rid, name): random.Random(f"{rid}{name}").choice(["a", "b", "tie"]) for rid in ids for name, _ in users
        }
        expected = {}
        deadline = time.monotonic() + (duration_s or 0)

        def annotate(k: int) -> tuple[list[float], list[str]]:
            name, http, rng = users[k][0], sessions[k], random.Random(k)
            latencies, errors = [], []
            for rid in rng.sample(ids, len(ids)):
                if pause:
                    time.sleep(rng.uniform(*pause))
                    if time.monotonic() > deadline:
                        break
                expected[(rid, name)] = values[(rid, name)]
                started = time.perf_counter()
                response = http.post(
                    f"/records/{rid}/responses",
                    json={"values": {"preference": {"value": expected[(rid, name)]}}, "status": "submitted"},
                )
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 201:
                    errors.append(f"{response.status_code} {response.text[:200]}")
            return latencies, errors

        started = time.perf_counter()
        with ThreadPoolExecutor(annotators) as pool:
            results = list(pool.map(annotate, range(annotators)))
        wall = time.perf_counter() - started
        for http in sessions:
            http.close()

        stored = {}
        user_names = {str(u.id): u.username for u in rg_client.users}
        for start in range(0, records, 100):
            page = owner.get(
                f"/datasets/{dataset_id}/records", params={"include": "responses", "offset": start, "limit": 100}
            ).json()["items"]
            for record in page:
                for response in record.get("responses", []):
                    if response["status"] == "submitted":
                        stored[(record["id"], user_names[response["user_id"]])] = response["values"]["preference"][
                            "value"
                        ]
    latencies = [ms for lat, _ in results for ms in lat]
    return {
        "latencies_ms": latencies,
        "p50_ms": statistics.median(latencies),
        "p95_ms": p95(latencies),
        "errors": [e for _, errs in results for e in errs],
        "sent": len(expected),
        "stored": len(stored),
        "mismatched": sum(stored.get(key) != value for key, value in expected.items()),
        "wall_s": wall,
        "responses_per_s": len(latencies) / wall,
    }


def single_annotator_p95(url: str, owner_key: str, records: int = 50) -> float:
    """The same submit alone: the load test's baseline."""
    return load_test(url, owner_key, annotators=1, records=records)["p95_ms"]


def row(name, value, baseline, target, ok, unit="ms"):
    return {
        "name": name,
        "value": round(value, 1),
        "baseline": round(baseline, 1) if baseline else baseline,
        "ratio": round(value / baseline, 2) if baseline else None,
        "target": target,
        "unit": unit,
        "ok": ok,
    }


def main() -> list[dict]:
    import argilla as rg

    from labeling.launcher import lifecycle, processes

    home = tempfile.mkdtemp(prefix="prefab-bench-search-")
    for key in ("ARGILLA_API_URL", "ARGILLA_API_KEY"):
        os.environ.pop(key, None)
    try:
        info = lifecycle.up(home, port=processes.free_port(), database=DATABASE)
        key = json.loads(open(f"{home}/owner.json").read())["api_key"]
        url = info["url"]
        client = rg.Argilla(api_url=url, api_key=key)
        workspace = "bench"
        rg.Workspace(name=workspace, client=client).create()
        owner = httpx.Client(base_url=f"{url}/api/v1", headers={"X-Argilla-Api-Key": key}, timeout=300)
        started = time.perf_counter()
        dataset_id = make_dataset(client, workspace, "search-bench", N_API, owner)
        name, password = new_annotator(client, workspace)
        annotator = login(url, name, password)
        user_id = annotator.get("/me").json()["id"]
        first = record_ids(owner, dataset_id, 100)
        items = [{"record_id": rid, "values": {"preference": {"value": "a"}}, "status": "submitted"} for rid in first]
        annotator.post("/me/responses/bulk", json={"items": items}).raise_for_status()
        if info["database"] == "postgresql":
            grow_with_psql(home, dataset_id, N_RECORDS, user_id, N_SUBMITTED)
        else:
            grow_with_sql(f"{home}/argilla/argilla.db", dataset_id, N_RECORDS, user_id, N_SUBMITTED)
        print(f"{N_RECORDS:,} records ready in {time.perf_counter() - started:.0f}s", flush=True)

        search = f"/me/datasets/{dataset_id}/records/search"
        queue = timed(lambda: annotator.post(search, json=PENDING_QUEUE, params=UI_PARAMS), 50)
        total = annotator.post(search, json=PENDING_QUEUE, params=UI_PARAMS).json()["total"]
        assert total == N_RECORDS - N_SUBMITTED, total
        listing = timed(lambda: owner.get(f"/datasets/{dataset_id}/records", params=UI_PARAMS), 50)
        filtered_body = {
            "filters": {
                "and": [
                    {
                        "type": "range",
                        "scope": {"entity": "metadata", "metadata_property": "margin"},
                        "ge": 0.2,
                        "le": 0.8,
                    },
                    {
                        "type": "terms",
                        "scope": {"entity": "suggestion", "question": "preference", "property": "agent"},
                        "values": ["judge-2"],
                    },
                    *PENDING_QUEUE["filters"]["and"],
                ]
            },
            "sort": [
                {"scope": {"entity": "suggestion", "question": "preference", "property": "score"}, "order": "desc"}
            ],
        }
        filtered = timed(lambda: annotator.post(search, json=filtered_body, params=UI_PARAMS), 30)
        text = timed(lambda: annotator.post(search, json={"query": {"text": {"q": "rivers"}}}, params=UI_PARAMS), 10)
        vector = [0.1] * DIMS
        similar_body = {
            "query": {"vector": {"name": "prompt_vector", "value": vector, "order": "most_similar"}},
            "filters": {
                "and": [
                    {"type": "terms", "scope": {"entity": "metadata", "metadata_property": "cluster"}, "values": ["c3"]}
                ]
            },
        }
        similar = timed(lambda: annotator.post(search, json=similar_body, params=UI_PARAMS), 10)
        progress = timed(lambda: annotator.get(f"/me/datasets/{dataset_id}/metrics"), 20)
        annotator.close()
        owner.close()

        alone = single_annotator_p95(url, key)
        human = load_test(url, key, pause=HUMAN_PAUSE_S, duration_s=HUMAN_SECONDS)
        load = load_test(url, key)
        for result in (human, load):
            assert not result["errors"] and result["stored"] == result["sent"] and not result["mismatched"], {
                k: v for k, v in result.items() if k != "latencies_ms"
            }
        base = p95(listing)
        n = f"{N_RECORDS // 1000}k"
        return [
            row(
                f"UI record search p95, {n} records (vs plain listing)", p95(queue), base, "< 300 ms", p95(queue) < 300
            ),
            row(f"filtered+sorted search p95, {n}", p95(filtered), base, "< 300 ms", p95(filtered) < 300),
            row(f"text query p95, {n}", p95(text), base, "info", None),
            row(f"similarity + filter p95, {n}", p95(similar), base, "info", None),
            row(f"annotator metrics p95, {n}", p95(progress), base, "info", None),
            row(
                f"20 annotators at a human pace (5-20 s), submit p95 "
                f"({human['sent']} responses in {HUMAN_SECONDS:.0f} s, none lost)",
                human["p95_ms"],
                alone,
                "< 300 ms",
                human["p95_ms"] < 300,
            ),
            row(
                f"20 annotators back to back, submit p95 ({load['sent']} responses, none lost)",
                load["p95_ms"],
                alone,
                "info",
                None,
            ),
        ]
    finally:
        lifecycle.down(home)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    for r in main():
        print(r)
