"""What labeling/argilla_speedups.py replaces still answers as Argilla does: a record's status follows
`min_submitted` through submit, discard and delete, and an enabled webhook still gets its events. Its
request scheduling starts requests one per turn of the event loop, in the order they came."""

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from labeling_fixtures import answer, login, make_user, pref_dataset, unique


def status(argilla_http, record_id: str) -> str:
    return argilla_http.get(f"/records/{record_id}").json()["status"]


def answered(http, record_id: str, status: str) -> str:
    response = answer(http, record_id, status=status)
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.server
def test_record_status_follows_min_submitted_through_submit_discard_and_delete(labeling_server, argilla_client, argilla_http):
    workspace = unique("ws-status")
    (alice, alice_pw), (bob, bob_pw) = make_user(argilla_client, workspace), make_user(argilla_client, workspace)
    _, ids = pref_dataset(argilla_client, workspace, 2, min_submitted=2)
    with login(labeling_server, alice.username, alice_pw) as a, login(labeling_server, bob.username, bob_pw) as b:
        alices = answered(a, ids["r0"], "submitted")
        assert status(argilla_http, ids["r0"]) == "pending"  # one of two
        bobs = answered(b, ids["r0"], "submitted")
        assert status(argilla_http, ids["r0"]) == "completed"
        assert status(argilla_http, ids["r1"]) == "pending"

        changed = a.put(f"/responses/{alices}", json={"values": {"pref": {"value": "b"}}, "status": "discarded"})
        assert changed.status_code == 200, changed.text
        assert status(argilla_http, ids["r0"]) == "pending"  # a discard does not count
        assert a.put(f"/responses/{alices}", json={"values": {"pref": {"value": "b"}}, "status": "submitted"}).status_code == 200
        assert status(argilla_http, ids["r0"]) == "completed"
        assert b.delete(f"/responses/{bobs}").status_code == 200
        assert status(argilla_http, ids["r0"]) == "pending"


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.server
def test_an_enabled_webhook_still_gets_response_and_record_events(labeling_server, argilla_client, argilla_http):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    Hook.received.clear()
    workspace = unique("ws-hook")
    annotator, password = make_user(argilla_client, workspace)
    _, ids = pref_dataset(argilla_client, workspace, 2)
    created = argilla_http.post("/webhooks", json={"url": f"http://127.0.0.1:{receiver.server_port}/hook",
                                                   "events": ["response.created", "record.completed"]})
    assert created.status_code == 201, created.text
    try:
        with login(labeling_server, annotator.username, password) as http:
            response_id = answered(http, ids["r1"], "submitted")
        deadline = time.monotonic() + 60  # the rq worker delivers them
        while len(Hook.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        events = {event["type"]: event["data"] for event in Hook.received}
        assert events["response.created"]["id"] == response_id
        assert events["record.completed"]["id"] == ids["r1"] and events["record.completed"]["status"] == "completed"
    finally:
        argilla_http.delete(f"/webhooks/{created.json()['id']}")  # the session server goes back to no webhook
        receiver.shutdown()


def test_requests_start_one_per_loop_turn_in_the_order_they_came():
    """Requests that arrive together start in separate turns of the loop, so that it looks for new ones
    between any two; the first starts at once; other ASGI scopes are not held."""
    from labeling.argilla_speedups import one_request_start_per_turn

    turn, started = [0], []

    async def app(scope, receive, send):
        started.append((scope.get("path", scope["type"]), turn[0]))
        time.sleep(0.01)  # a submit's work never gives the loop up

    async def main():
        loop = asyncio.get_running_loop()

        def count():  # +1 per turn of the loop
            turn[0] += 1
            loop.call_soon(count)

        count()
        served = one_request_start_per_turn(app)
        await asyncio.gather(*(served({"type": "http", "path": f"/r{i}"}, None, None) for i in range(5)),
                             served({"type": "lifespan"}, None, None))

    asyncio.run(main())
    http = [(path, t) for path, t in started if path != "lifespan"]
    assert [path for path, _ in http] == ["/r0", "/r1", "/r2", "/r3", "/r4"]
    first = dict(started)["lifespan"]  # the turn all six came in: lifespan is not held
    assert [t for _, t in http] == [first, first + 1, first + 2, first + 3, first + 4], started
