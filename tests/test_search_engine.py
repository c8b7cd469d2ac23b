"""The prefab-sql search engine, through the real server: the `argilla` SDK for what it exposes, and the
HTTP calls the Argilla UI makes (sort, per-user queue, metrics). Every expected answer is computed here
from the records this module inserted. Every test runs on PostgreSQL and again on SQLite."""

import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from labeling_fixtures import free_port, login, make_user, unique

pytestmark = pytest.mark.server

N = 40
WORDS = ["cats", "dogs", "birds", "fish"]


def make_rows():
    rng = random.Random(7)
    rows = []
    for i in range(N):
        animal = WORDS[i % 4]
        row = {
            "id": f"rec-{i:02d}",
            "prompt": f"Tell me about {animal} number {i}" + (" and the state-of-the-art" if i % 5 == 0 else ""),
            "answer": f"Answer {i}: {animal} are great" + (" catalogue" if i == 3 else ""),
            "chat": [
                {"role": "user", "content": f"hello {'zebra' if i == 7 else 'world'}"},
                {"role": "assistant", "content": "hi"},
            ],
            "metadata": {},
            "vector": [rng.uniform(-1, 1) for _ in range(4)],
            "pref": ["a", "b", "tie"][i % 3],
            "pref_score": round((i % 10) / 10, 2),
            "agent": "judge-1" if i < 20 else "judge-2",
            "quality": (i % 5) + 1,
        }
        if i % 7 != 6:  # some records have no metadata: sorted last, not counted in metrics
            row["metadata"] = {
                "cluster": f"c{i % 3}" if i % 11 else ["c1", "c2"],
                "length": i * 10,
                "margin": round(i / 8, 3),
            }
        rows.append(row)
    return rows


ALICE_SUBMITS = {i: ["a", "b", "tie"][(i + 1) % 3] for i in range(0, 10)}
ALICE_DRAFTS = {10: "a", 11: "b", 12: "a"}
ALICE_DISCARDS = [13, 14]
BOB_SUBMITS = {i: "a" for i in range(5, 9)}
BOB_RATINGS = {5: 2, 6: 5, 7: 4, 8: 1}
ALICE_RATINGS = {i: (i % 5) + 1 for i in ALICE_SUBMITS}


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def backend(request, labeling_server):
    """The session's server (embedded PostgreSQL), then one on SQLite (`--database sqlite`)."""
    if request.param == "postgresql":
        yield labeling_server
        return
    from labeling.launcher import lifecycle

    home = Path(tempfile.mkdtemp(prefix="prefab-labeling-sqlite-"))
    try:
        info = lifecycle.up(home, port=free_port(), database="sqlite")
        owner = json.loads((home / "owner.json").read_text())
        yield {**info, "home": home, "api_key": owner["api_key"]}
    finally:
        lifecycle.down(home)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def data(backend):
    import argilla as rg

    client = rg.Argilla(api_url=backend["url"], api_key=backend["api_key"])
    workspace = unique("ws-search")
    alice, alice_pw = make_user(client, workspace)
    bob, bob_pw = make_user(client, workspace)
    settings = rg.Settings(
        fields=[rg.TextField(name="prompt"), rg.TextField(name="answer"), rg.ChatField(name="chat", required=False)],
        questions=[
            rg.LabelQuestion(name="pref", labels=["a", "b", "tie"]),
            rg.RatingQuestion(name="quality", values=[1, 2, 3, 4, 5], required=False),
        ],
        metadata=[
            rg.TermsMetadataProperty(name="cluster"),
            rg.IntegerMetadataProperty(name="length"),
            rg.FloatMetadataProperty(name="margin"),
        ],
        vectors=[rg.VectorField(name="vec", dimensions=4)],
        distribution=rg.TaskDistribution(min_submitted=1),
    )
    dataset = rg.Dataset(name=unique("search"), workspace=workspace, settings=settings, client=client).create()
    rows = make_rows()
    records = []
    for i, row in enumerate(rows):
        responses = []
        for user, status, values, ratings in (
            (alice, "submitted", ALICE_SUBMITS, ALICE_RATINGS),
            (alice, "draft", ALICE_DRAFTS, {}),
            (bob, "submitted", BOB_SUBMITS, BOB_RATINGS),
        ):
            if i in values:
                responses.append(rg.Response("pref", values[i], user_id=user.id, status=status))
                if i in ratings:
                    responses.append(rg.Response("quality", ratings[i], user_id=user.id, status=status))
        if i in ALICE_DISCARDS:
            responses.append(rg.Response("pref", "a", user_id=alice.id, status="discarded"))
        records.append(
            rg.Record(
                id=row["id"],
                fields={"prompt": row["prompt"], "answer": row["answer"], "chat": row["chat"]},
                metadata=row["metadata"],
                vectors={"vec": row["vector"]},
                responses=responses,
                suggestions=[
                    rg.Suggestion("pref", row["pref"], score=row["pref_score"], agent=row["agent"]),
                    rg.Suggestion("quality", row["quality"], agent="judge-1"),
                ],
            )
        )
    dataset.records.log(records)
    server_ids = {r.id: str(r._server_id) for r in dataset.records}
    alice_http = login(backend, alice.username, alice_pw)
    bob_http = login(backend, bob.username, bob_pw)
    owner_http = httpx.Client(
        base_url=backend["url"] + "/api/v1", headers={"X-Argilla-Api-Key": backend["api_key"]}, timeout=60
    )
    yield {
        "dataset": dataset,
        "rows": rows,
        "ids": server_ids,
        "by_server_id": {v: k for k, v in server_ids.items()},
        "alice": alice,
        "bob": bob,
        "alice_http": alice_http,
        "bob_http": bob_http,
        "owner": owner_http,
    }
    for http in (alice_http, bob_http, owner_http):
        http.close()


def sdk_ids(data, **query) -> list[str]:
    import argilla as rg

    return [r.id for r in data["dataset"].records(query=rg.Query(**query))]


def search(
    http, data, body: dict, me: bool = False, items: list | None = None, **params
) -> tuple[list[str], int, list]:
    """POST records/search (the UI's call when me=True); returns (external ids, total, scores).

    Pass `items=[]` to get the raw result items appended to it."""
    dataset_id = data["dataset"].id
    path = f"/me/datasets/{dataset_id}/records/search" if me else f"/datasets/{dataset_id}/records/search"
    response = http.post(path, json=body, params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    found = response.json()["items"]
    if items is not None:
        items.extend(found)
    return (
        [data["by_server_id"][item["record"]["id"]] for item in found],
        response.json()["total"],
        [i.get("query_score") for i in found],
    )


def where(data, predicate) -> set[str]:
    return {row["id"] for i, row in enumerate(data["rows"]) if predicate(i, row)}


def cluster_values(row) -> list:
    value = row["metadata"].get("cluster")
    return value if isinstance(value, list) else [value] if value else []


# ---------------------------------------------------------------- filters through the SDK


def test_the_engine_answers_from_the_backend_database(data, backend):
    status = data["owner"].get("/status").json()["search_engine"]
    assert status["engine"] == "prefab-sql"
    assert status["database"] == backend["database"]


def test_metadata_terms_filter_matches_scalars_and_list_elements(data):
    got = sdk_ids(data, filter=("metadata.cluster", "in", ["c1"]))
    assert set(got) == where(data, lambda i, r: "c1" in cluster_values(r))
    assert "rec-11" in got  # a list value ["c1", "c2"]


def test_metadata_range_filters(data):
    got = sdk_ids(data, filter=[("metadata.length", ">=", 100), ("metadata.length", "<=", 250)])
    assert set(got) == where(data, lambda i, r: r["metadata"] and 100 <= r["metadata"]["length"] <= 250)
    got = sdk_ids(data, filter=("metadata.margin", ">=", 2.5))
    assert set(got) == where(data, lambda i, r: r["metadata"] and r["metadata"]["margin"] >= 2.5)
    assert got  # not vacuous


def test_suggestion_value_score_and_agent_filters(data):
    assert set(sdk_ids(data, filter=("pref.suggestion", "==", "tie"))) == where(data, lambda i, r: r["pref"] == "tie")
    assert set(sdk_ids(data, filter=("pref.score", ">=", 0.7))) == where(data, lambda i, r: r["pref_score"] >= 0.7)
    assert set(sdk_ids(data, filter=[("pref.agent", "==", "judge-2"), ("pref.score", "<=", 0.3)])) == where(
        data, lambda i, r: r["agent"] == "judge-2" and r["pref_score"] <= 0.3
    )
    # rating suggestions filter by range
    assert set(sdk_ids(data, filter=("quality.suggestion", ">=", 4))) == where(data, lambda i, r: r["quality"] >= 4)


def test_response_status_filters_without_user(data):
    answered = set(ALICE_SUBMITS) | set(ALICE_DRAFTS) | set(ALICE_DISCARDS) | set(BOB_SUBMITS)
    rid = lambda i: f"rec-{i:02d}"  # noqa: E731
    assert set(sdk_ids(data, filter=("response.status", "==", "submitted"))) == {
        rid(i) for i in set(ALICE_SUBMITS) | set(BOB_SUBMITS)
    }
    assert set(sdk_ids(data, filter=("response.status", "==", "draft"))) == {rid(i) for i in ALICE_DRAFTS}
    assert set(sdk_ids(data, filter=("response.status", "==", "discarded"))) == {rid(i) for i in ALICE_DISCARDS}
    assert set(sdk_ids(data, filter=("response.status", "==", "pending"))) == {
        rid(i) for i in range(N) if i not in answered
    }
    assert set(sdk_ids(data, filter=("response.status", "in", ["pending", "discarded"]))) == {
        rid(i) for i in range(N) if i not in answered or i in ALICE_DISCARDS
    }


def test_response_value_filter(data):
    expected = {
        f"rec-{i:02d}"
        for i in range(N)
        if ALICE_SUBMITS.get(i) == "a" or ALICE_DRAFTS.get(i) == "a" or i in ALICE_DISCARDS or BOB_SUBMITS.get(i) == "a"
    }
    assert set(sdk_ids(data, filter=("pref.response", "==", "a"))) == expected


def test_record_status_follows_min_submitted(data):
    completed = {f"rec-{i:02d}" for i in set(ALICE_SUBMITS) | set(BOB_SUBMITS)}
    assert set(sdk_ids(data, filter=("status", "==", "completed"))) == completed
    assert len(sdk_ids(data, filter=("status", "==", "pending"))) == N - len(completed)


# ---------------------------------------------------------------- text query


def test_text_query_and_semantics_over_all_fields(data):
    assert set(sdk_ids(data, query="cats")) == where(data, lambda i, r: i % 4 == 0)
    assert set(sdk_ids(data, query="cats great")) == where(data, lambda i, r: i % 4 == 0)  # AND across fields
    assert sdk_ids(data, query="cats dogs") == []
    assert set(sdk_ids(data, query="cats | dogs")) == where(data, lambda i, r: i % 4 in (0, 1))
    assert set(sdk_ids(data, query="birds -number")) == set()  # every prompt has "number"
    assert set(sdk_ids(data, query='"state of the art"')) == where(data, lambda i, r: i % 5 == 0)
    assert set(sdk_ids(data, query="CATAL*")) == {"rec-03"}  # prefix, case-insensitive
    assert set(sdk_ids(data, query="zebra")) == {"rec-07"}  # chat field content


def test_text_query_on_one_field_and_bm25_order(data):
    ids, total, _ = search(data["owner"], data, {"query": {"text": {"q": "catalogue", "field": "prompt"}}})
    assert (ids, total) == ([], 0)
    ids, total, _ = search(data["owner"], data, {"query": {"text": {"q": "catalogue", "field": "answer"}}})
    assert (ids, total) == (["rec-03"], 1)
    # "state" is in 8 prompts; a document with more of the query terms ranks first
    ids, total, scores = search(data["owner"], data, {"query": {"text": {"q": "state | cats"}}})
    assert total == len(where(data, lambda i, r: i % 5 == 0 or i % 4 == 0))
    both = where(data, lambda i, r: i % 5 == 0 and i % 4 == 0)
    assert set(ids[: len(both)]) == both and scores == sorted(scores, reverse=True)


def test_query_syntax_as_lucene_simple_query_parser_reads_it(data):
    """commons.py:111-123 es_simple_query_string (default_operator AND, fuzzy_transpositions off) hands the text to
    Lucene's SimpleQueryParser: `*` alone matches all, blank matches none, parentheses group, `|` needs no
    spaces, ~N is an edit distance after a term and a slop after a phrase, an unclosed quote is ignored."""
    cats = where(data, lambda i, r: i % 4 == 0)
    assert set(sdk_ids(data, query="*")) == {row["id"] for row in data["rows"]}
    assert search(data["owner"], data, {"query": {"text": {"q": "   "}}})[:2] == ([], 0)
    assert set(sdk_ids(data, query="cats (great | zebra)")) == cats  # not (cats great) | zebra
    assert set(sdk_ids(data, query="cats|dogs")) == where(data, lambda i, r: i % 4 in (0, 1))
    assert set(sdk_ids(data, query="zebr~1")) == {"rec-07"}  # one deletion
    assert sdk_ids(data, query="zebar~1") == [] and set(sdk_ids(data, query="zebar~2")) == {
        "rec-07"
    }  # a swap is 2 edits
    assert sdk_ids(data, query='"tell about"') == [] and len(sdk_ids(data, query='"tell about"~1')) == N
    assert set(sdk_ids(data, query='"cats great')) == cats  # the stray quote is dropped: two terms
    assert sdk_ids(data, query="number-great") == []  # one term's words in one field (number: prompt, great: answer)


MULTILINGUAL = {
    "zh-1": "我爱北京天安门",
    "zh-2": "北方的天气很冷",
    "ja": "東京はカタカナで書く",
    "hi": "नमस्ते दुनिया",
    "ar": "مرحبا بالعالم",
    "fr": "Un café noir, s'il vous plaît",
}


CODES = [10, 9, "100", "b", "A", "é"]  # a terms property: keywords in ES (numbers too), sorted as text by code point


@pytest.fixture(scope="module")
def texts(backend):
    """A dataset of one text field in several scripts."""
    import argilla as rg

    client = rg.Argilla(api_url=backend["url"], api_key=backend["api_key"])
    workspace = unique("ws-text")
    rg.Workspace(name=workspace, client=client).create()
    settings = rg.Settings(
        fields=[rg.TextField(name="text")],
        questions=[rg.LabelQuestion(name="ok", labels=["y", "n"])],
        metadata=[rg.TermsMetadataProperty(name="code")],
    )
    dataset = rg.Dataset(name=unique("scripts"), workspace=workspace, settings=settings, client=client).create()
    dataset.records.log(
        [
            {"id": key, "text": value, "code": code}
            for (key, value), code in zip(MULTILINGUAL.items(), CODES, strict=True)
        ]
    )
    return dataset


def text_ids(dataset, q: str) -> set[str]:
    import argilla as rg

    return {r.id for r in dataset.records(query=rg.Query(query=q))}


def test_text_in_every_script_is_split_into_words_as_es_does(texts):
    """ES's standard analyzer (commons.py:169, text fields with no analyzer named: the standard one) splits words by
    Unicode text segmentation: each Chinese ideograph and hiragana alone, katakana runs together, combining marks
    kept with their letter; lowercased, accents kept."""
    assert text_ids(texts, "京") == {"zh-1", "ja"}
    assert text_ids(texts, "北京") == {"zh-1"}  # both ideographs, anywhere (zh-2 has 北 only, ja 京 only)
    assert text_ids(texts, "カタカナ") == {"ja"}
    assert text_ids(texts, "नमस्ते") == {"hi"}
    assert text_ids(texts, "ते") == set()  # a syllable inside a word is no word of its own
    assert text_ids(texts, "مرحبا") == {"ar"}
    assert text_ids(texts, "CAFÉ") == {"fr"} and text_ids(texts, "cafe") == set()
    assert text_ids(texts, "plaît") == {"fr"}


# ---------------------------------------------------------------- sort, pagination, totals (UI calls)


def sort_body(*orders):
    return {"sort": [{"scope": scope, "order": order} for scope, order in orders]}


def expected_order(data, *keys) -> list[str]:
    """ES order for (key, desc) pairs: missing values last, asc/desc per key (the test data has no full ties)."""
    rows = list(data["rows"])
    for key, desc in reversed(keys):
        present = sorted((r for r in rows if key(r) is not None), key=key, reverse=desc)
        rows = present + [r for r in rows if key(r) is None]
    return [r["id"] for r in rows]


def test_sort_by_metadata_puts_missing_last(data):
    length = lambda r: r["metadata"].get("length")  # noqa: E731
    for order in ("asc", "desc"):
        ids, total, scores = search(
            data["owner"], data, sort_body(({"entity": "metadata", "metadata_property": "length"}, order))
        )
        assert total == N and ids[: N - 5] == expected_order(data, (length, order == "desc"))[: N - 5]
        assert {i for i in ids[N - 5 :]} == {r["id"] for r in data["rows"] if not r["metadata"]}
        assert all(s is None for s in scores)  # like ES: no score when sorting by a field


def test_sort_by_suggestion_score_then_metadata(data):
    ids, _, _ = search(
        data["owner"],
        data,
        sort_body(
            ({"entity": "suggestion", "question": "pref", "property": "score"}, "desc"),
            ({"entity": "metadata", "metadata_property": "margin"}, "asc"),
        ),
    )
    assert ids == expected_order(
        data, (lambda r: r["pref_score"], True), (lambda r: r["metadata"].get("margin"), False)
    )


def test_sort_by_inserted_and_updated_time(data):
    for prop, order in (("inserted_at", "desc"), ("updated_at", "asc")):
        items = []
        ids, _, _ = search(data["owner"], data, sort_body(({"entity": "record", "property": prop}, order)), items=items)
        times = [item["record"][prop] for item in items]
        assert len(ids) == N and times == sorted(times, reverse=order == "desc")


def test_sort_by_rating_response_averages_users(data):
    def avg(r):
        i = int(r["id"][4:])
        values = [v[i] for v in (ALICE_RATINGS, BOB_RATINGS) if i in v]
        return sum(values) / len(values) if values else None

    ids, _, _ = search(data["owner"], data, sort_body(({"entity": "response", "question": "quality"}, "desc")))
    rated = [r for r in data["rows"] if avg(r) is not None]
    assert [avg(next(r for r in rated if r["id"] == i)) for i in ids[: len(rated)]] == sorted(
        (avg(r) for r in rated), reverse=True
    )
    assert set(ids[len(rated) :]) == {r["id"] for r in data["rows"]} - {r["id"] for r in rated}


def test_pagination_and_totals(data):
    body = {
        "filters": {
            "and": [
                {
                    "type": "terms",
                    "scope": {"entity": "metadata", "metadata_property": "cluster"},
                    "values": ["c0", "c2"],
                }
            ]
        },
        **sort_body(({"entity": "metadata", "metadata_property": "margin"}, "asc")),
    }
    full, total, _ = search(data["owner"], data, body)
    assert total == len(full) == len(where(data, lambda i, r: {"c0", "c2"} & set(cluster_values(r))))
    pages = []
    for offset in range(0, total + 7, 7):
        page, page_total, _ = search(data["owner"], data, body, offset=offset, limit=7)
        assert page_total == total
        pages += page
    assert pages == full


def test_ui_queue_is_per_user_pending_in_a_stable_shuffled_order(data):
    body = {
        "query": {},
        "filters": {
            "and": [
                {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
                {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]},
            ]
        },
    }
    completed = set(ALICE_SUBMITS) | set(BOB_SUBMITS)
    alice_seen = set(ALICE_SUBMITS) | set(ALICE_DRAFTS) | set(ALICE_DISCARDS)
    alice, total, _ = search(data["alice_http"], data, body, me=True)
    assert set(alice) == {
        f"rec-{i:02d}" for i in range(N) if i not in completed and i not in alice_seen
    } and total == len(alice)
    again, _, _ = search(data["alice_http"], data, body, me=True)
    assert again == alice  # stable for one annotator
    bob, _, _ = search(data["bob_http"], data, body, me=True)
    assert set(bob) == {f"rec-{i:02d}" for i in range(N) if i not in completed}
    # commons.py:444-451: ES orders a user's records by random_score seeded with the user id, a shuffle of each
    # user's own, so annotators working at once do not label the same records in the same order; here the
    # shuffle is md5(user:dataset:record)
    for queue, user in ((alice, data["alice"]), (bob, data["bob"])):

        def rank(rid, user=user):
            return hashlib.md5(
                f"{user.id}:{data['dataset'].id}:{data['ids'][rid].replace('-', '')}".encode()
            ).hexdigest()

        assert queue == sorted(queue, key=rank)
    mine, theirs = [rid for rid in alice if rid in set(bob)], [rid for rid in bob if rid in set(alice)]
    assert mine not in [theirs[k:] + theirs[:k] for k in range(len(theirs))]  # two shuffles, not one order rotated
    first, page_total, _ = search(data["alice_http"], data, body, me=True, offset=0, limit=5)
    assert first == alice[:5] and page_total == total


def test_ui_status_and_response_filters_are_per_user(data):
    def me(http, values):
        body = {
            "filters": {
                "and": [{"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": values}]
            }
        }
        return set(search(http, data, body, me=True)[0])

    rid = lambda keys: {f"rec-{i:02d}" for i in keys}  # noqa: E731
    assert me(data["alice_http"], ["submitted"]) == rid(ALICE_SUBMITS)
    assert me(data["bob_http"], ["submitted"]) == rid(BOB_SUBMITS)
    assert me(data["alice_http"], ["draft", "discarded"]) == rid(list(ALICE_DRAFTS) + ALICE_DISCARDS)
    body = {
        "filters": {"and": [{"type": "terms", "scope": {"entity": "response", "question": "pref"}, "values": ["a"]}]}
    }
    assert set(search(data["bob_http"], data, body, me=True)[0]) == rid(BOB_SUBMITS)
    body = {"filters": {"and": [{"type": "range", "scope": {"entity": "response", "question": "quality"}, "ge": 4}]}}
    assert set(search(data["bob_http"], data, body, me=True)[0]) == rid(i for i, v in BOB_RATINGS.items() if v >= 4)


# ---------------------------------------------------------------- vectors


def cosine_order(data, query, candidates, least=False):
    q = np.asarray(query) * (-1 if least else 1)
    score = {
        r["id"]: (1 + float(np.dot(r["vector"], q) / (np.linalg.norm(r["vector"]) * np.linalg.norm(q)))) / 2
        for r in data["rows"]
        if r["id"] in candidates
    }
    return sorted(score, key=lambda k: -score[k]), score


def test_most_and_least_similar_with_filters(data):
    import argilla as rg

    query = [0.5, -0.2, 0.9, 0.1]
    everything = {r["id"] for r in data["rows"]}
    for least in (False, True):
        got = [
            (r.id, s)
            for r, s in data["dataset"].records(
                query=rg.Query(similar=rg.Similar("vec", query, most_similar=not least))
            )
        ]
        order, score = cosine_order(data, query, everything, least)
        assert [i for i, _ in got] == order
        assert all(math.isclose(s, score[i], rel_tol=1e-4) for i, s in got)
    c0 = where(data, lambda i, r: "c0" in cluster_values(r))
    got = [
        r.id
        for r, _ in data["dataset"].records(
            query=rg.Query(similar=rg.Similar("vec", query), filter=("metadata.cluster", "==", "c0"))
        )
    ]
    assert got == cosine_order(data, query, c0)[0]


def test_similar_to_a_record_excludes_it_and_respects_text(data):
    record_id = data["ids"]["rec-04"]
    body = {
        "query": {"vector": {"name": "vec", "record_id": record_id, "order": "most_similar"}, "text": {"q": "cats"}}
    }
    ids, total, _ = search(data["owner"], data, body, limit=5)
    cats = where(data, lambda i, r: i % 4 == 0) - {"rec-04"}
    expected = cosine_order(data, data["rows"][4]["vector"], cats)[0][:5]
    assert ids == expected and total == len(expected)


# ---------------------------------------------------------------- progress and metrics


def test_dataset_progress(data):
    progress = data["dataset"].progress()
    completed = len(set(ALICE_SUBMITS) | set(BOB_SUBMITS))
    assert (progress["total"], progress["completed"], progress["pending"]) == (N, completed, N - completed)


def test_user_progress_counts_only_that_users_responses(data):
    metrics = data["alice_http"].get(f"/me/datasets/{data['dataset'].id}/metrics").json()
    assert metrics["responses"]["submitted"] == len(ALICE_SUBMITS)
    assert metrics["responses"]["draft"] == len(ALICE_DRAFTS)
    assert metrics["responses"]["discarded"] == len(ALICE_DISCARDS)
    assert metrics["responses"]["pending"] == N - len(ALICE_SUBMITS) - len(ALICE_DRAFTS) - len(ALICE_DISCARDS)
    bob = data["bob_http"].get(f"/me/datasets/{data['dataset'].id}/metrics").json()
    assert (bob["responses"]["submitted"], bob["responses"]["pending"]) == (len(BOB_SUBMITS), N - len(BOB_SUBMITS))


def test_metadata_metrics(data):
    props = {
        p["name"]: p["id"]
        for p in data["owner"].get(f"/me/datasets/{data['dataset'].id}/metadata-properties").json()["items"]
    }
    terms = data["owner"].get(f"/metadata-properties/{props['cluster']}/metrics").json()
    values = [v for r in data["rows"] for v in cluster_values(r)]
    counts = {t: sum(t in cluster_values(r) for r in data["rows"]) for t in set(values)}
    assert terms["total"] == len(values)
    assert [(v["term"], v["count"]) for v in terms["values"]] == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    lengths = [r["metadata"]["length"] for r in data["rows"] if r["metadata"]]
    assert data["owner"].get(f"/metadata-properties/{props['length']}/metrics").json() == {
        "type": "integer",
        "min": min(lengths),
        "max": max(lengths),
    }
    margins = [r["metadata"]["margin"] for r in data["rows"] if r["metadata"]]
    metrics = data["owner"].get(f"/metadata-properties/{props['margin']}/metrics").json()
    assert (
        metrics["type"] == "float"
        and math.isclose(metrics["min"], min(margins))
        and math.isclose(metrics["max"], max(margins))
    )


# ---------------------------------------------------------------- typed equality and dates, as the ES engine reads them


def record_filter(data, flt: dict) -> set[str]:
    ids, _, _ = search(data["owner"], data, {"filters": {"and": [flt]}})
    return set(ids)


def test_equality_on_numbers_compares_numbers(data):
    """A numeric field is mapped as a number in ES (argilla-server 2.8.0 commons.py:202-204, integer -> long and
    float -> float; :230, suggestion score -> float), and a term query on it compares values, not their text."""
    assert set(sdk_ids(data, filter=("metadata.margin", "==", 1))) == where(
        data, lambda i, r: r["metadata"].get("margin") == 1.0
    )
    assert set(sdk_ids(data, filter=("metadata.margin", "==", 1))) == {"rec-08"}
    assert set(sdk_ids(data, filter=("metadata.length", "in", ["50", "70.0"]))) == {"rec-05", "rec-07"}
    assert set(sdk_ids(data, filter=("pref.score", "==", 0))) == where(data, lambda i, r: r["pref_score"] == 0)
    assert (
        record_filter(
            data,
            {
                "type": "terms",
                "scope": {"entity": "metadata", "metadata_property": "length"},
                "values": ["not a number"],
            },
        )
        == set()
    )


def test_date_filters_read_dates_as_es_does(data):
    """Record dates are ES date fields (commons.py:666, date_nanos, read as strict_date_optional_time||epoch_millis):
    partial dates and epoch milliseconds are bounds too, and an inclusive upper bound rounds up what it leaves out
    (`le` today takes in today); a date that cannot be read matches nothing instead of failing the request."""
    now = datetime.now(UTC)
    everyone = {row["id"] for row in data["rows"]}
    scope = {"entity": "record", "property": "inserted_at"}

    def dated(**bounds):
        return record_filter(data, {"type": "range", "scope": scope, **bounds})

    assert dated(le=now.strftime("%Y-%m-%d")) == everyone  # the whole day, not its first instant
    assert dated(le=now.strftime("%Y-%m")) == everyone and dated(le=now.strftime("%Y")) == everyone
    assert dated(ge=now.strftime("%Y-%m")) == everyone
    assert dated(le=now.strftime("%Y-%m-%dT%H:%M")) == everyone  # the current minute is in
    assert dated(ge=(now - timedelta(hours=2)).timestamp() * 1000) == everyone  # epoch milliseconds
    assert dated(ge=str(int((now + timedelta(hours=2)).timestamp() * 1000))) == set()
    assert dated(le="yesterday") == set()
    assert (
        record_filter(data, {"type": "terms", "scope": scope, "values": [now.strftime("%Y-%m-%d"), "not a date"]})
        == set()
    )


# ---------------------------------------------------------------- no request the SDK or the UI can send ends in a 500

GRID_SCOPES = [
    *(
        {"entity": "record", "property": p}
        for p in ("id", "external_id", "inserted_at", "updated_at", "status", "nope")
    ),
    *({"entity": "metadata", "metadata_property": p} for p in ("cluster", "length", "margin", "nope")),
    *(
        {"entity": "suggestion", "question": q, "property": p}
        for q in ("pref", "quality", "nope")
        for p in ("value", "score", "agent", "type")
    ),
    *({"entity": "response", "question": q} for q in ("pref", "quality", "nope")),
    {"entity": "response", "property": "status"},
]
GRID_VALUES = ["a", "5", "5.0", "-1", "1e309", "nan", "2024-05-01", "2024-05", "1714521600000", "", "rec-03", "☃", "c1"]
GRID_QUERIES = [
    "*",
    "cats",
    "cats | (dogs",
    '"a b"~x',
    "~~",
    "-",
    "+|",
    "(((",
    "x~99",
    "\\",
    '"',
    "*cats",
    "a*b*",
    "☃~1",
]


def test_no_filter_sort_or_query_in_the_grid_ends_in_a_500(data):
    """Every scope the API takes, with terms and ranges of every kind of value, each sort both ways, and odd
    text queries: the engine answers (200) or the API refuses the request (422), never a server error."""
    owner, alice = data["owner"], data["alice_http"]
    dataset_id = data["dataset"].id
    failures = []

    def ask(http, path, body):
        try:
            response = http.post(path, json=body, params={"limit": 5})
        except httpx.TransportError as e:  # the server process died or dropped the request
            failures.append((path.split("/")[1], json.dumps(body)[:300], repr(e)))
            return
        if response.status_code >= 500:
            failures.append((path.split("/")[1], json.dumps(body)[:300], response.status_code))

    for scope in GRID_SCOPES:
        for http, path in (
            (owner, f"/datasets/{dataset_id}/records/search"),
            (alice, f"/me/datasets/{dataset_id}/records/search"),
        ):
            ask(http, path, {"filters": {"and": [{"type": "terms", "scope": scope, "values": GRID_VALUES}]}})
            for low, high in (
                ("1", "5"),
                ("2024-01-01", "2024-12-31"),
                ("a", "b"),
                ("0", "1714521600000"),
                ("x", None),
            ):
                ask(http, path, {"filters": {"and": [{"type": "range", "scope": scope, "ge": low, "le": high}]}})
            for order in ("asc", "desc"):
                ask(http, path, {"sort": [{"scope": scope, "order": order}]})
                ask(http, path, {"query": {"text": {"q": "cats"}}, "sort": [{"scope": scope, "order": order}]})
    for q in GRID_QUERIES:
        for field in (None, "prompt", "chat", "nope"):
            ask(
                owner,
                f"/datasets/{dataset_id}/records/search",
                {"query": {"text": {"q": q, **({"field": field} if field else {})}}},
            )
    assert not failures, "\n".join(map(str, failures))


def test_a_terms_property_sorts_as_text_by_code_point(texts, backend):
    """commons.py:200 maps a terms property as a keyword: sorted as text by code point, numbers in it too ("10" <
    "100" < "9"), with or without a text query."""
    expected = [key for key, _ in sorted(zip(MULTILINGUAL, CODES, strict=True), key=lambda kv: str(kv[1]))]
    with httpx.Client(
        base_url=backend["url"] + "/api/v1", headers={"X-Argilla-Api-Key": backend["api_key"]}, timeout=60
    ) as http:
        by_id = {str(r._server_id): r.id for r in texts.records}
        for body in ({}, {"query": {"text": {"q": "*"}}}):
            for order in ("asc", "desc"):
                body = {
                    **body,
                    "sort": [{"scope": {"entity": "metadata", "metadata_property": "code"}, "order": order}],
                }
                found = http.post(f"/datasets/{texts.id}/records/search", json=body, params={"limit": 50})
                assert found.status_code == 200, found.text
                got = [by_id[item["record"]["id"]] for item in found.json()["items"]]
                assert got == (expected if order == "asc" else expected[::-1]), (body, got)


# ---------------------------------------------------------------- relevance (BM25 over per-field index statistics)

# Two text fields, ASCII words split on spaces (the standard analyzer splits them the same way). The note field's
# name and several values contain "cat" inside other words (category, concatenate): no match, and no document
# frequency, for the word "cat". Records tagged "few" are a small filtered subset.
RELEVANCE = {
    "r1": ("cat cat dog", "category catalogue", "few"),
    "r2": ("dog", "cat", "few"),
    "r3": ("bird dog dog dog dog", "", "few"),
    "r4": ("cat bird", "dog dog", "many"),
    "r5": ("fish fish", "concatenate", "many"),
    "r6": ("fish dog", "category", "many"),
    "r7": ("bird", "bird bird cat", "many"),
    "r8": ("fish", "fish", "many"),
}


@pytest.fixture(scope="module")
def relevance(backend):
    import argilla as rg

    client = rg.Argilla(api_url=backend["url"], api_key=backend["api_key"])
    workspace = unique("ws-bm25")
    rg.Workspace(name=workspace, client=client).create()
    settings = rg.Settings(
        fields=[rg.TextField(name="text"), rg.TextField(name="category", required=False)],
        questions=[rg.LabelQuestion(name="ok", labels=["y", "n"])],
        metadata=[rg.TermsMetadataProperty(name="tag")],
    )
    dataset = rg.Dataset(name=unique("bm25"), workspace=workspace, settings=settings, client=client).create()
    dataset.records.log(
        [
            {"id": key, "text": text_value, **({"category": note} if note else {}), "tag": tag}
            for key, (text_value, note, tag) in RELEVANCE.items()
        ]
    )
    with httpx.Client(
        base_url=backend["url"] + "/api/v1", headers={"X-Argilla-Api-Key": backend["api_key"]}, timeout=60
    ) as http:
        yield dataset, http, {str(r._server_id): r.id for r in dataset.records}


def es_bm25(clauses: list[str], only: str | None = None, records: dict = RELEVANCE) -> dict[str, float]:
    """The score ES gives each matching record for `a | b | ...` (one word per clause) over both fields or `only`
    one: commons.py:111-123 asks simple_query_string over `fields.*` (commons.py:706), which Elasticsearch runs
    as a bool of the clauses, each a dis_max over the fields with tie_breaker 1 (a sum); every field is `text`
    (commons.py:169), scored by Lucene's BM25Similarity (k1 1.2, b 0.75): idf = ln(1 + (docCount - df + 0.5) /
    (df + 0.5)) and tf / (tf + k1 (1 - b + b dl / avgdl)), with docCount, df and avgdl of that field over the
    whole index."""
    fields = {"text": 0, "category": 1} if only is None else {only: {"text": 0, "category": 1}[only]}
    docs = {key: {name: values[i].split() for name, i in fields.items()} for key, values in records.items()}
    scores = {}
    for name in fields:
        present = [d[name] for d in docs.values() if d[name]]
        avgdl = sum(map(len, present)) / len(present)
        for key, doc in docs.items():
            tokens = doc[name]
            for word in clauses:
                if word in tokens:
                    df = sum(word in p for p in present)
                    idf = math.log(1 + (len(present) - df + 0.5) / (df + 0.5))
                    tf = tokens.count(word)
                    scores[key] = scores.get(key, 0.0) + idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * len(tokens) / avgdl))
    return scores


def ranked(relevance, body: dict) -> dict[str, float]:
    dataset, http, by_id = relevance
    found = http.post(f"/datasets/{dataset.id}/records/search", json=body, params={"limit": 50})
    assert found.status_code == 200, found.text
    return {by_id[item["record"]["id"]]: item["query_score"] for item in found.json()["items"]}


def test_text_scores_are_bm25_over_each_fields_index_statistics(relevance):
    for q, only in (
        ("cat | bird", None),
        ("cat", None),
        ("dog | fish", None),
        ("dog", "category"),
        ("cat | bird", "text"),
    ):
        expected = es_bm25(q.split(" | "), only)
        got = ranked(relevance, {"query": {"text": {"q": q, **({"field": only} if only else {})}}})
        assert got.keys() == expected.keys() and list(got.values()) == sorted(got.values(), reverse=True), (
            q,
            only,
            got,
            expected,
        )
        assert all(math.isclose(got[k], expected[k], rel_tol=1e-6) for k in expected), (q, only, got, expected)
    # a filter narrows the records, not the statistics they are scored with (an index keeps them for all)
    few = {"and": [{"type": "terms", "scope": {"entity": "metadata", "metadata_property": "tag"}, "values": ["few"]}]}
    expected = {k: v for k, v in es_bm25(["cat", "bird"]).items() if RELEVANCE[k][2] == "few"}
    got = ranked(relevance, {"query": {"text": {"q": "cat | bird"}}, "filters": few})
    assert got.keys() == expected.keys() and all(math.isclose(got[k], expected[k], rel_tol=1e-6) for k in expected), (
        got,
        expected,
    )
    # the statistics follow the records: one added (counted on its own), then one changed (all counted again)
    dataset, records = relevance[0], dict(RELEVANCE)
    for key, value in (("r9", ("cat cat cat", "", "many")), ("r8", ("fish cat", "fish", "many"))):
        dataset.records.log(
            [{"id": key, "text": value[0], **({"category": value[1]} if value[1] else {}), "tag": value[2]}]
        )
        relevance[2].update({str(r._server_id): r.id for r in dataset.records})
        records[key] = value
        expected = es_bm25(["cat"], records=records)
        got = ranked(relevance, {"query": {"text": {"q": "cat"}}})
        assert got.keys() == expected.keys() and all(
            math.isclose(got[k], expected[k], rel_tol=1e-6) for k in expected
        ), (key, got, expected)


# 1 edit from "xat": ten substitutions first alphabetically, two more after them, a deletion and an insertion
NEAR_XAT = ["bat", "cat", "eat", "fat", "hat", "mat", "oat", "pat", "rat", "sat", "tat", "vat", "at", "xats"]


@pytest.fixture(scope="module")
def near_words(backend):
    import argilla as rg

    client = rg.Argilla(api_url=backend["url"], api_key=backend["api_key"])
    workspace = unique("ws-fuzzy")
    rg.Workspace(name=workspace, client=client).create()
    settings = rg.Settings(
        fields=[rg.TextField(name="text")], questions=[rg.LabelQuestion(name="ok", labels=["y", "n"])]
    )
    dataset = rg.Dataset(name=unique("fuzzy"), workspace=workspace, settings=settings, client=client).create()
    dataset.records.log([{"id": word, "text": f"the {word}"} for word in NEAR_XAT])
    return dataset


def test_a_fuzzy_term_stands_for_at_most_ten_index_terms(near_words):
    """commons.py:119 sets fuzzy_max_expansions 10: Lucene's FuzzyQuery keeps the 10 terms of the index nearest to
    the query term (boost 1 - edits / min(lengths): a deletion from a 3-letter word weighs more than a
    substitution), the alphabetically first among equals (TopTermsRewrite), and matches the records holding them."""
    assert text_ids(near_words, "xat~1") == {"bat", "cat", "eat", "fat", "hat", "mat", "oat", "pat", "rat", "sat"}
    assert text_ids(near_words, "xat~1 | tat") == {
        "bat",
        "cat",
        "eat",
        "fat",
        "hat",
        "mat",
        "oat",
        "pat",
        "rat",
        "sat",
        "tat",
    }
    assert text_ids(near_words, "at~1") == {
        "at",
        "bat",
        "cat",
        "eat",
        "fat",
        "hat",
        "mat",
        "oat",
        "pat",
        "rat",
    }  # itself first


def test_the_ascii_tokenizer_splits_words_as_unicode_segmentation_does(tmp_path):
    """tokenize's ASCII fast path against the general UAX #29 split (the regex package) on 100,000 random ASCII strings.
    Apostrophes are left out of the draw: at a word's start regex keeps "'a" whole, where UAX #29 (WB999) and
    Lucene break it off, as the fast path does."""
    from labeling.launcher import bootstrap

    code = r"""
import random, search.query as se
rng = random.Random(0)
alphabet = "aZ9_0x1 .:,;-/!?()\t\n\""
for _ in range(100_000):
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
    assert se.tokenize(text) == se.words(text), (text, se.tokenize(text), se.words(text))
assert se.tokenize("Don't stop: 3.5 km/h, e.g. 1,000;2 'a") == [
    "don't", "stop", "3.5", "km", "h", "e.g", "1,000;2", "a"
]
"""
    python = next(bootstrap.venv_dir().glob("bin/python"))
    result = subprocess.run(
        [str(python), "-c", code],
        cwd=Path(__file__).resolve().parent.parent / "labeling" / "server",
        env={**os.environ, "TMPDIR": str(tmp_path)},  # importing Argilla's app copies its UI statics into TMPDIR
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
