"""LLM-as-judge: rubric parsing and validation, retries with a changed seed, null scores with the raw text kept,
refusals, ensembles, the position-swapped pairwise judge. Judge outputs we control come from the in-process
fake backend where only the answers matter, and from the local OpenAI-compatible server (real `openai` client,
real HTTP) where what is sent, refusals and failed calls matter; the real embedded SmolLM2 judges a few rows."""

import json
import math
import re

import pytest
from quality_runs import make_run

from pipeline.core.cache import CallCache
from pipeline.core.config import AspectSpec, JudgeConfig, ModelSpec
from pipeline.core.queries import candidate_scores
from pipeline.stages import judge
from pipeline.stages.judge import judge_pairs, overall_score, pair_confidence, parse_rubric, parse_verdict

ASPECTS = JudgeConfig().aspects
NAMES = [a.name for a in ASPECTS]


def rated(score, names=NAMES) -> str:
    return json.dumps({n: {"rationale": f"{n} looks fine", "score": score} for n in names})


def response_of(request) -> str:
    return request["messages"][-1]["content"].split("## Response to rate\n\n", 1)[1]


def server_spec(server, name="judge", **kw) -> dict:
    return {
        "name": name,
        "backend": "openai",
        "model": f"{name}-model",
        "base_url": server.url,
        "max_retries": 0,
        "timeout": 10,
        **kw,
    }


def fake_spec(name="judge") -> dict:
    return {"name": name, "backend": "fake", "model": f"{name}-model"}


# ---------------------------------------------------------------- parsing


def test_parse_rubric_accepts_json_fences_and_prose_around_it():
    expected = [{"name": n, "score": 4.0, "rationale": f"{n} looks fine"} for n in NAMES]
    assert parse_rubric(rated(4), ASPECTS) == expected
    assert parse_rubric("Here you go:\n```json\n" + rated(4) + "\n```\nHope this helps", ASPECTS) == expected
    assert parse_rubric("Sure! " + rated(4) + " Done.", ASPECTS) == expected
    assert parse_rubric(json.dumps({"aspects": json.loads(rated(4))}), ASPECTS) == expected
    assert parse_rubric(json.dumps({n: "3" for n in NAMES}), ASPECTS)[0]["score"] == 3.0


@pytest.mark.parametrize(
    "text, error",
    [
        ("I think it is a good answer.", "no JSON"),
        ("", "empty"),
        (None, "empty"),
        ('{"helpfulness": {"score": 4', "no JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({n: {"score": 4} for n in NAMES[:-1]}), "'truthfulness' is missing"),
        (rated(7), "outside 1 to 5"),
        (rated(0), "outside 1 to 5"),
        (json.dumps({n: {"score": "great"} for n in NAMES}), "helpfulness"),
        (json.dumps({n: {"score": float("nan")} for n in NAMES}), "outside"),
    ],
)
def test_parse_rubric_says_what_is_wrong(text, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_rubric(text, ASPECTS)


def test_overall_is_a_weighted_mean_and_mixes_scales_fairly():
    aspects = [AspectSpec(name="relevance", weight=2, min=1, max=5), AspectSpec(name="fluency", weight=1, min=1, max=5)]
    assert overall_score([{"score": 5}, {"score": 2}], aspects) == pytest.approx(4.0)
    mixed = [AspectSpec(name="a", min=1, max=5), AspectSpec(name="b", min=0, max=10)]
    # both at their top: the top of the combined scale; both at the middle: its middle
    assert overall_score([{"score": 5}, {"score": 10}], mixed) == pytest.approx(7.5)
    assert overall_score([{"score": 3}, {"score": 5}], mixed) == pytest.approx(4.0)


def test_verdicts_and_confidence():
    assert parse_verdict('{"rationale": "x", "winner": "A"}') == "A"
    assert parse_verdict('```json\n{"winner": "Tie"}\n```') == "tie"
    with pytest.raises(ValueError):
        parse_verdict('{"winner": "C"}')
    assert pair_confidence("chosen", "chosen") == 1.0
    assert pair_confidence("chosen", "chosen", 0.9, 0.7) == pytest.approx(0.8)
    assert pair_confidence("chosen", "tie") == 0.5
    assert pair_confidence("chosen", "rejected") == 0.0
    assert pair_confidence("tie", "tie") == 1.0
    assert pair_confidence(None, "chosen") is None


def test_config_rejects_bad_rubrics():
    with pytest.raises(ValueError, match="distinct names"):
        JudgeConfig(aspects=[AspectSpec(name="a"), AspectSpec(name="a")])
    with pytest.raises(ValueError, match="min 5 must be below max 5"):
        JudgeConfig(aspects=[AspectSpec(name="a", min=5, max=5)])
    with pytest.raises(ValueError, match="weight above 0"):
        JudgeConfig(aspects=[AspectSpec(name="a", weight=0)])


# ---------------------------------------------------------------- the stage against a server we control


ANSWERS = ["GOOD answer", "FIXED answer", "RANGE answer", "REFUSE answer", "MISSING answer", "PROSE answer"]


def scripted_judge(request):
    """Valid, invalid-then-valid, out of range, refusal, missing aspect, prose-wrapped JSON."""
    text = response_of(request)
    if text == "GOOD answer":
        return json.dumps({n: {"rationale": "ok", "score": 5 if n == "helpfulness" else 4} for n in NAMES})
    if text == "FIXED answer":
        return rated(3) if request["seed"] >= 1 else '{"helpfulness": {"rationale": "cut off'
    if text == "RANGE answer":
        return rated(9)
    if text == "REFUSE answer":
        return {"content": None, "refusal": "I can't help with rating that."}
    if text == "MISSING answer":
        return json.dumps({"helpfulness": {"rationale": "only one", "score": 2}})
    return "My assessment: " + rated(2) + " That is all."


@pytest.fixture
def judged(openai_server, tmp_path):
    openai_server.respond = scripted_judge
    run, config = make_run(
        tmp_path / "run",
        ["Say something."],
        {"Say something.": ANSWERS},
        judge={"judges": [server_spec(openai_server)], "parse_retries": 2},
    )
    counts = judge.step(config, run)
    rows = run.read("judgments").join(run.read("candidates").select("candidate_id", "text"), on="candidate_id")
    return run, config, counts, {r["text"]: r for r in rows.iter_rows(named=True)}


def test_valid_answers_are_scored_with_rationales(judged):
    _, _, counts, rows = judged
    good = rows["GOOD answer"]
    assert good["overall"] == pytest.approx(4.25) and good["error"] is None
    assert [a["score"] for a in good["aspects"]] == [5, 4, 4, 4] and all(
        a["rationale"] == "ok" for a in good["aspects"]
    )
    assert rows["PROSE answer"]["overall"] == 2.0
    assert counts["judgments"] == 6 and counts["scored"] == 3 and counts["failed"] == 3


def test_unparseable_then_valid_is_retried_with_a_new_seed(judged, openai_server):
    _, _, _, rows = judged
    assert rows["FIXED answer"]["overall"] == 3.0 and rows["FIXED answer"]["error"] is None
    sent = [b for b in openai_server.bodies if response_of(b) == "FIXED answer"]
    assert [(b["seed"], b["temperature"]) for b in sent] == [(0, 0.0), (1, 0.7)]


def test_bad_answers_get_a_null_score_with_raw_text_and_reason(judged, openai_server):
    _, _, _, rows = judged
    out_of_range = rows["RANGE answer"]
    assert out_of_range["overall"] is None and out_of_range["raw"] == rated(9)
    assert out_of_range["error"].startswith("out of range") and "after 3 attempt(s)" in out_of_range["error"]
    assert all(a["score"] is None for a in out_of_range["aspects"])
    refused = rows["REFUSE answer"]
    assert refused["overall"] is None and "refused: I can't help" in refused["error"]
    missing = rows["MISSING answer"]
    assert (
        missing["overall"] is None
        and "'honesty' is missing" in missing["error"]
        and missing["raw"].startswith('{"helpfulness"')
    )
    # each unparseable one was asked 1 + parse_retries times, each with its own seed; a refusal is an answer
    # the client already judged final (as for generators): asked once
    for text in ("RANGE answer", "MISSING answer"):
        assert sorted(b["seed"] for b in openai_server.bodies if response_of(b) == text) == [0, 1, 2]
    assert [b["seed"] for b in openai_server.bodies if response_of(b) == "REFUSE answer"] == [0]


def test_structured_output_sends_the_rubric_schema(judged, openai_server):
    fmt = openai_server.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == NAMES
    assert schema["properties"]["helpfulness"]["properties"]["score"] == {"type": "number", "minimum": 1, "maximum": 5}


def test_rerun_repays_only_failed_calls(judged, openai_server):
    run, config, _, _ = judged
    before = openai_server.total
    first = run.read("judgments")
    judge.step(config, run)
    # parsed and unparseable answers come from the call cache; only the refusal (an error) is asked again
    assert openai_server.total - before == 1
    assert run.read("judgments").equals(first)


@pytest.mark.parametrize("structured_output, json_schema", [(False, True), (True, False)])
def test_without_structured_output_the_prompt_asks_for_json(fake_backend, tmp_path, structured_output, json_schema):
    """Turned off in the config, or a backend that does not honour response_format (transformers)."""
    fake_backend.json_schema = json_schema
    fake_backend.respond = lambda r: rated(3)
    run, config = make_run(
        tmp_path / "run",
        ["Hi"],
        {"Hi": ["Hello!"]},
        judge={"judges": [fake_spec()], "structured_output": structured_output},
    )
    judge.step(config, run)
    [request] = fake_backend.requests
    assert request.response_format is None
    system = request.messages[0]["content"]
    assert "Answer with JSON only" in system and all(f"- {n} (1 to 5)" in system for n in NAMES)
    assert run.read("judgments")["overall"].to_list() == [3.0]


def test_ensemble_records_agreement(fake_backend, tmp_path):
    def two_judges(request):
        text = response_of(request)
        base = {"short": 2, "medium answer": 3, "a much longer answer": 4}[text]
        if request["model"] == "second-model" and text == "short":
            base = 5  # the second judge disagrees on one candidate
        return rated(base)

    fake_backend.respond = two_judges
    run, config = make_run(
        tmp_path / "run",
        ["Q"],
        {"Q": ["short", "medium answer", "a much longer answer"]},
        judge={"judges": [fake_spec("first"), fake_spec("second")]},
    )
    counts = judge.step(config, run)
    df = run.read("judgments")
    assert df.height == 6 and sorted(df["judge"].unique()) == ["first", "second"]
    assert counts["agreement_first_vs_second_exact"] == pytest.approx(2 / 3, abs=1e-3)
    assert counts["agreement_first_vs_second_spearman"] == pytest.approx(-0.5)
    scores = candidate_scores(df).join(run.read("candidates").select("candidate_id", "text"), on="candidate_id")
    assert dict(zip(scores["text"], scores["score"], strict=True))["short"] == pytest.approx(3.5)


def test_same_model_as_generator_is_warned_about(fake_backend, tmp_path, capsys):
    """The judge stage prints the warning (naming only the judge that is also a generator) and counts it."""
    fake_backend.respond = lambda r: rated(4)
    run, config = make_run(
        tmp_path / "run",
        ["Hi"],
        {"Hi": ["Hello!"]},
        generate={"generators": [{"name": "gen", "backend": "fake", "model": "j1-model"}]},
        judge={"judges": [fake_spec("j1"), fake_spec("j2")]},
    )
    capsys.readouterr()
    counts = judge.step(config, run)
    shown = capsys.readouterr()
    warnings = [line for line in (shown.out + shown.err).splitlines() if "warning" in line]
    assert len(warnings) == 1 and "judge 'j1' is also a generator" in warnings[0], shown
    assert counts["same_model_judges"] == 1


# ---------------------------------------------------------------- pairwise


def pair_server(backend, decide):
    """decide(first_text, second_text) -> 'A' | 'B' | 'tie' (or a raw reply string)."""

    def respond(request):
        user = request["messages"][-1]["content"]
        a = user.split("## Response A\n\n", 1)[1].split("\n\n## Response B\n\n")[0]
        b = user.split("## Response B\n\n", 1)[1]
        winner = decide(a, b)
        return json.dumps({"rationale": "because", "winner": winner}) if winner in ("A", "B", "tie") else winner

    backend.respond = respond


def pairwise(tmp_path, items, **cfg):
    """judge_pairs on the fake backend (the `fake_backend` fixture)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cache = CallCache(tmp_path / "cache.sqlite")
    try:
        return judge_pairs(ModelSpec(**fake_spec()), items, cache, JudgeConfig(**cfg))
    finally:
        cache.close()


ITEMS = [
    ([{"role": "user", "content": "Q1"}], "GOOD one", "bad one"),
    ([{"role": "user", "content": "Q2"}], "bad two", "GOOD two"),
]


def test_pairwise_judges_both_orders_and_maps_verdicts_back(fake_backend, tmp_path):
    pair_server(fake_backend, lambda a, b: "A" if "GOOD" in a else "B" if "GOOD" in b else "tie")
    rows = pairwise(tmp_path, ITEMS + [([{"role": "user", "content": "Q3"}], "same", "same too")])
    assert [(r["verdict_ab"], r["verdict_ba"], r["consistent"], r["confidence"]) for r in rows] == [
        ("chosen", "chosen", True, 1.0),
        ("rejected", "rejected", True, 1.0),
        ("tie", "tie", True, 1.0),
    ]
    assert len(fake_backend.requests) == 6  # 3 pairs x 2 orders
    orders = [
        (r.messages[-1]["content"].index("GOOD one") < r.messages[-1]["content"].index("bad one"))
        for r in fake_backend.requests
        if "GOOD one" in r.messages[-1]["content"]
    ]
    assert sorted(orders) == [False, True]  # shown once in each order
    assert json.loads(rows[0]["raw"])["ab"] == '{"rationale": "because", "winner": "A"}'


def test_a_judge_that_always_prefers_the_first_position_is_inconsistent(fake_backend, tmp_path):
    pair_server(fake_backend, lambda a, b: "A")
    rows = pairwise(tmp_path, ITEMS)
    assert all(r["verdict_ab"] == "chosen" and r["verdict_ba"] == "rejected" for r in rows)
    assert all(r["consistent"] is False and r["confidence"] == 0.0 for r in rows)


def test_pairwise_failure_is_recorded_not_raised(fake_backend, tmp_path):
    pair_server(fake_backend, lambda a, b: "I refuse to compare." if "one" in a + b else "A")
    rows = pairwise(tmp_path, ITEMS, parse_retries=1)
    assert rows[0]["verdict_ab"] is None and rows[0]["consistent"] is None and rows[0]["confidence"] is None
    assert "ab: unparseable" in rows[0]["error"] and "ba: unparseable" in rows[0]["error"]
    assert rows[1]["consistent"] is False and rows[1]["error"] is None


def test_pairwise_confidence_from_logprobs(fake_backend, tmp_path):
    def respond(request):
        content = json.dumps(
            {
                "rationale": "r",
                "winner": "A" if "GOOD one" in request["messages"][-1]["content"].split("## Response B")[0] else "B",
            }
        )
        prob = 0.9 if "GOOD one" in request["messages"][-1]["content"].split("## Response B")[0] else 0.6
        tokens = [
            {"token": '{"', "logprob": -0.01, "bytes": None, "top_logprobs": []},
            {"token": content[-3:-2], "logprob": math.log(prob), "bytes": None, "top_logprobs": []},
            {"token": '"}', "logprob": -0.01, "bytes": None, "top_logprobs": []},
        ]
        return {"content": content, "logprobs": tokens}

    fake_backend.respond = respond
    [row] = pairwise(tmp_path, ITEMS[:1], logprobs=True)
    assert row["consistent"] is True and row["confidence"] == pytest.approx(0.75)
    assert all(r.logprobs is True for r in fake_backend.requests)


# ---------------------------------------------------------------- the real embedded SmolLM2 as judge


def test_embedded_smollm2_as_judge_never_fails_the_batch(tmp_path):
    run, config = make_run(
        tmp_path / "run",
        ["What is 2 + 2?"],
        {"What is 2 + 2?": ["4", "2 + 2 equals 4."]},
        judge={
            "judges": [{"name": "smol", "model": "embedded:smollm2", "batch_size": 4}],
            "max_tokens": 16,
            "parse_retries": 1,
        },
    )
    counts = judge.step(config, run)
    df = run.read("judgments")
    assert df.height == 2 and counts["judgments"] == 2
    for row in df.iter_rows(named=True):
        assert row["raw"]  # what the model said is kept either way
        if row["overall"] is None:  # a 135M model rarely writes the full JSON in 16 tokens: the null-score path
            assert row["error"].startswith(("unparseable", "out of range")) and "after 2 attempt(s)" in row["error"]
        else:
            assert 1 <= row["overall"] <= 5 and row["error"] is None
    # a second run answers from the call cache: same table, no model call needed
    judge.step(config, run)
    assert run.read("judgments").equals(df)


# ---------------------------------------------------------------- scoring: logprobs (one token per aspect)


def token_reply(probs: dict[str, float], text=None) -> dict:
    tops = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in probs.items()]
    first = max(probs, key=probs.get)
    return {
        "content": text or first,
        "logprobs": [{"token": first, "logprob": math.log(probs[first]), "bytes": None, "top_logprobs": tops}],
    }


def test_logprob_scoring_weights_the_digits(openai_server, tmp_path):
    def respond(request):
        answer = request["messages"][-1]["content"].split("## Response to rate\n\n", 1)[1]
        if answer.startswith("GOOD"):
            return token_reply({"5": 0.6, "4": 0.2, " ": 0.1, "7": 0.05})  # 7 is off the scale: ignored
        if answer.startswith("SILENT"):
            return token_reply({"The": 0.9, "A": 0.05})
        return token_reply({"1": 0.3, "2": 0.1, "Hello": 0.5})

    openai_server.respond = respond
    # the failing one first: its null scores must not decide the column's type for the others
    run, config = make_run(
        tmp_path / "run",
        ["Q"],
        {"Q": ["SILENT answer", "GOOD answer", "POOR answer"]},
        judge={"judges": [server_spec(openai_server)], "scoring": "logprobs"},
    )
    judge.step(config, run)
    rows = {
        r["text"]: r
        for r in run.read("judgments")
        .join(run.read("candidates").select("candidate_id", "text"), on="candidate_id")
        .iter_rows(named=True)
    }
    assert rows["GOOD answer"]["overall"] == pytest.approx((5 * 0.6 + 4 * 0.2) / 0.8)
    assert [a["score"] for a in rows["GOOD answer"]["aspects"]] == [pytest.approx(4.75)] * 4
    assert rows["POOR answer"]["overall"] == pytest.approx((1 * 0.3 + 2 * 0.1) / 0.4)
    assert json.loads(rows["GOOD answer"]["raw"])["helpfulness"] == {"4": 0.2, "5": 0.6}
    silent = rows["SILENT answer"]
    assert silent["overall"] is None and silent["error"].startswith("unparseable: helpfulness: none of")
    for sent in openai_server.bodies:  # they arrive concurrently, in any order
        assert (
            sent["max_tokens"] == 1
            and sent["logprobs"] is True
            and sent["top_logprobs"] == 20
            and "response_format" not in sent
        )
    asks = sorted(b["messages"][-1]["content"].rsplit("\n\n", 1)[1] for b in openai_server.bodies)
    assert asks.count("helpfulness score (1-5):") == 3 and len(set(asks)) == 4
    assert openai_server.total == 12  # 3 candidates x 4 aspects, no retries (the distribution would not change)


def test_logprob_scoring_needs_single_digit_scales():
    with pytest.raises(ValueError, match="whole numbers within 0..9"):
        JudgeConfig(scoring="logprobs", aspects=[AspectSpec(name="a", min=1, max=10)])


def test_logprob_pairwise_with_a_first_position_bias(fake_backend, tmp_path):
    fake_backend.respond = lambda request: token_reply({"A": 0.7, "B": 0.3})
    rows = pairwise(tmp_path, ITEMS, scoring="logprobs")
    assert [(r["verdict_ab"], r["verdict_ba"], r["consistent"], r["confidence"]) for r in rows] == [
        ("chosen", "rejected", False, 0.0)
    ] * 2
    fake_backend.respond = lambda request: token_reply({"A": 0.52, "B": 0.48})
    rows = pairwise(tmp_path / "again", ITEMS, scoring="logprobs")
    assert all(r["verdict_ab"] == r["verdict_ba"] == "tie" and r["consistent"] for r in rows)


def test_embedded_smollm2_logprob_judge_gives_graded_scores(tmp_path):
    run, config = make_run(
        tmp_path / "run",
        ["What is the capital of France?"],
        {"What is the capital of France?": ["The capital of France is Paris.", "I like turtles."]},
        judge={
            "judges": [{"name": "smol", "model": "embedded:smollm2", "batch_size": 8}],
            "scoring": "logprobs",
            "aspects": [{"name": "helpfulness"}, {"name": "truthfulness"}],
        },
    )
    counts = judge.step(config, run)
    df = run.read("judgments")
    assert counts["scored"] == 2  # digits are always among the top tokens: no null scores
    for row in df.iter_rows(named=True):
        assert 1 <= row["overall"] <= 5 and row["error"] is None
        assert set(json.loads(row["raw"])) == {"helpfulness", "truthfulness"}


@pytest.mark.parametrize("fault", ["nochoices", "html", "500"])
def test_a_failed_call_is_not_asked_again_by_the_judge(openai_server, tmp_path, fault, fast_backoff):
    """One policy with generate: the client spends max_retries on a bad answer (here 2, so 3 requests), then
    the judge records the failure; it does not multiply that budget by parse_retries."""
    openai_server.respond = lambda r: {"fault": fault} if response_of(r) == "BROKEN answer" else rated(4)
    run, config = make_run(
        tmp_path / "run",
        ["Say something."],
        {"Say something.": ["BROKEN answer", "GOOD answer"]},
        judge={"judges": [server_spec(openai_server, max_retries=2)], "parse_retries": 2},
    )
    judge.step(config, run)
    assert sum(response_of(b) == "BROKEN answer" for b in openai_server.bodies) == 3
    rows = {
        r["text"]: r
        for r in run.read("judgments").join(run.read("candidates"), on="candidate_id").iter_rows(named=True)
    }
    assert rows["BROKEN answer"]["overall"] is None and rows["BROKEN answer"]["error"].startswith("call failed: ")
    assert "(3 attempts)" in rows["BROKEN answer"]["error"]
    assert rows["GOOD answer"]["overall"] == 4.0


def test_a_judge_whose_every_call_fails_stops_the_run_loudly(openai_server, tmp_path, prefab):
    openai_server.fault_rates = {"nochoices": 1.0}
    run, config = make_run(
        tmp_path / "run",
        ["Say something."],
        {"Say something.": ["ONE answer", "TWO answer"]},
        judge={"judges": [server_spec(openai_server)]},
    )
    with pytest.raises(Exception) as raised:
        judge.step(config, run)
    assert "every one of the 2 judge calls failed" in str(raised.value) and "no choices" in str(raised.value)
    assert run.read("judgments").height == 2 and run.stage_info("judge")["status"] == "failed"


def test_the_embedded_judge_scores_where_its_top_20_tokens_hold_no_digit(tmp_path):
    """The demo's first gold pair: SmolLM2's 20 likeliest first tokens hold no score digit (it opens a code
    fence), so capped at 20 like an OpenAI server the pointwise judge failed to score it (7 of the 40 demo gold
    pairs did); an in-process model looks at 100."""
    from pathlib import Path

    import yaml

    from pipeline.core.config import CalibrateConfig
    from pipeline.stages.gold import read_gold

    root = Path(__file__).resolve().parent.parent
    demo = JudgeConfig.model_validate(yaml.safe_load((root / "data" / "configs" / "demo.yaml").read_text())["judge"])
    pair = read_gold(CalibrateConfig(gold=[str(root / "data" / "gold" / "demo.jsonl")])).row(0, named=True)
    cache = CallCache(tmp_path / "cache.sqlite")
    try:
        rows = judge.judge_by_logprobs(
            demo.judges[0],
            [(pair["messages"], pair["chosen"]), (pair["messages"], pair["rejected"])],
            demo.aspects,
            cache,
            demo,
        )
    finally:
        cache.close()
    assert [r["error"] for r in rows] == [None, None]
    assert all(1 <= r["overall"] <= 5 for r in rows)
