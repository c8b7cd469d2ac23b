"""Who may do what on the embedded server, through its HTTP API: an annotator sees and labels only its
own workspace's datasets and reaches no admin endpoint; an admin is confined to its workspaces; nothing
works without credentials. Each refusal has a positive control, so a server that refuses everything fails."""

import httpx
import pytest
from labeling_fixtures import answer, login, make_user, unique

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def world(argilla_client, labeling_server):
    import argilla as rg

    ws_a, ws_b = unique("ws-a"), unique("ws-b")
    annotator, annotator_pw = make_user(argilla_client, ws_a)
    other, other_pw = make_user(argilla_client, ws_a)
    admin, admin_pw = make_user(argilla_client, ws_a, role="admin")
    rg.Workspace(name=ws_b, client=argilla_client).create()
    settings = rg.Settings(
        fields=[rg.TextField(name="prompt")], questions=[rg.LabelQuestion(name="pref", labels=["a", "b"])]
    )
    datasets = {}
    for ws in (ws_a, ws_b):
        ds = rg.Dataset(name=unique("sec"), workspace=ws, settings=settings, client=argilla_client).create()
        ds.records.log([{"id": "r1", "prompt": "one"}, {"id": "r2", "prompt": "two"}])
        datasets[ws] = (str(ds.id), str(next(iter(ds.records))._server_id))
    clients = {
        "annotator": login(labeling_server, annotator.username, annotator_pw),
        "other": login(labeling_server, other.username, other_pw),
        "admin": login(labeling_server, admin.username, admin_pw),
    }
    yield {"a": datasets[ws_a], "b": datasets[ws_b], "ws_a": ws_a, "ws_b": ws_b, **clients, "annotator_user": annotator}
    for client in clients.values():
        client.close()


def test_annotator_reads_and_labels_only_its_workspace(world):
    http = world["annotator"]
    (a_id, a_record), (b_id, b_record) = world["a"], world["b"]
    listed = {d["id"] for d in http.get("/me/datasets").json()["items"]}
    assert a_id in listed and b_id not in listed
    assert http.get(f"/datasets/{a_id}").status_code == 200
    assert http.get(f"/datasets/{b_id}").status_code == 403
    assert http.post(f"/me/datasets/{a_id}/records/search", json={}).status_code == 200
    assert http.post(f"/me/datasets/{b_id}/records/search", json={}).status_code == 403
    assert http.get(f"/datasets/{b_id}/progress").status_code == 403
    assert answer(http, b_record).status_code == 403
    assert answer(http, a_record).status_code == 201


def test_annotator_reaches_no_admin_endpoint(world):
    http = world["annotator"]
    a_id, _ = world["a"]
    assert http.get("/me").status_code == 200  # positive control
    refused = [
        http.get("/users"),
        http.post(
            "/users", json={"username": unique("x"), "password": "12345678abc", "first_name": "x", "role": "owner"}
        ),
        http.post("/workspaces", json={"name": unique("ws")}),
        http.delete(f"/datasets/{a_id}"),
        http.post(f"/datasets/{a_id}/records/search", json={}),  # search with everyone's responses
        http.put(f"/datasets/{a_id}/records/bulk", json={"items": [{"fields": {"prompt": "injected"}}]}),
        http.post(
            f"/datasets/{a_id}/metadata-properties", json={"name": "m", "title": "m", "settings": {"type": "terms"}}
        ),
        http.patch(f"/datasets/{a_id}", json={"guidelines": "changed by an annotator"}),
    ]
    assert [r.status_code for r in refused] == [403] * len(refused), [r.text for r in refused]


def test_annotator_never_sees_another_annotators_answers(world, argilla_http):
    """On a record both answered, the annotator's search shows its own answer and not the other's, which the owner
    sees there (so the check has something to hide, and the search does return answers)."""
    a_id, a_record = world["a"]
    mine, theirs = str(world["annotator_user"].id), str(world["other"].get("/me").json()["id"])
    listed = world["annotator"].post(f"/me/datasets/{a_id}/records/search", json={}).json()["items"]
    other_record = next(
        i["record"]["id"] for i in listed if i["record"]["id"] != a_record
    )  # r2: no other test answers it
    assert answer(world["other"], other_record, "b").status_code == 201
    assert answer(world["annotator"], other_record, "a").status_code == 201

    def responses(http, path):
        found = http.post(path, json={}, params={"include": "responses"}).json()["items"]
        return [
            r for item in found if item["record"]["id"] == other_record for r in item["record"].get("responses", [])
        ]

    assert {r["user_id"] for r in responses(argilla_http, f"/datasets/{a_id}/records/search")} >= {mine, theirs}
    seen = responses(world["annotator"], f"/me/datasets/{a_id}/records/search")
    assert [(r["user_id"], r["values"]["pref"]["value"]) for r in seen] == [(mine, "a")], seen


def test_admin_is_confined_to_its_workspaces(world):
    http = world["admin"]
    (a_id, _), (b_id, _) = world["a"], world["b"]
    assert http.get(f"/datasets/{a_id}").status_code == 200
    assert http.post(f"/datasets/{a_id}/records/search", json={}).status_code == 200
    assert http.get(f"/datasets/{b_id}").status_code == 403
    assert http.post(f"/datasets/{b_id}/records/search", json={}).status_code == 403


def test_no_or_bad_credentials_are_refused(world, labeling_server):
    a_id, _ = world["a"]
    url = labeling_server["url"] + "/api/v1"
    assert httpx.get(f"{url}/datasets/{a_id}").status_code == 401
    assert httpx.get(f"{url}/me", headers={"X-Argilla-Api-Key": "argilla.apikey"}).status_code == 401  # no default key
    assert httpx.get(f"{url}/me", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    assert httpx.post(f"{url}/token", data={"username": "owner", "password": "1234"}).status_code == 401
