"""An annotator labels a pair in the real Argilla UI (headless Debian Chromium driven by Playwright), and
`prefab pull` brings that label back mapped to the right chosen/rejected candidates."""

import shutil
import time
from pathlib import Path

import polars as pl
import pytest

from labeling_fixtures import make_user, unique
from labeling_runs import make_run
from pipeline.config import LabelingConfig

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GUIDELINES = "Pick the response whose sum is correct; a shorter answer is fine."


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed: `apt-get install -y chromium` (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_annotator_labels_a_pair_in_the_browser_and_pull_maps_it_back(browser, labeling_server, argilla_client, prefab, tmp_path):
    run, _ = make_run(tmp_path / unique("browser"), 4, labeling=LabelingConfig(guidelines=GUIDELINES))
    assert prefab("push", "--run", run.path).exit_code == 0
    user, password = make_user(argilla_client, "prefab", name=unique("annotator"))

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(labeling_server["url"] + "/sign-in")
    page.fill("input[name=Username]", user.username)
    page.fill("input[name=Password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "sign-in" not in url)

    page.get_by_text(run.path.name, exact=True).first.click()  # the dataset card on the home page
    page.get_by_text("Which response is better?").wait_for()
    prompt = page.get_by_text("Question number").first.inner_text()
    response_a = page.locator(".text_field_component", has_text="Response A").locator(".content-area").inner_text().strip()
    page.get_by_text("Guidelines", exact=True).first.click()
    page.get_by_text(GUIDELINES).wait_for()

    page.get_by_text("A is better", exact=True).click()
    page.locator('[aria-label="Why? (optional)"] ~ .container [contenteditable="true"]').fill("A has the right sum")
    page.screenshot(path=str(tmp_path / "before-submit.png"))
    page.get_by_role("button", name="Submit").click()

    # the UI sends the response asynchronously: wait until the server holds it
    dataset = argilla_client.datasets(name=run.path.name, workspace="prefab")
    deadline = time.time() + 60
    while time.time() < deadline:
        answered = [r for r in dataset.records(with_responses=True) for resp in r.responses if resp.user_id == user.id]
        if answered:
            break
        time.sleep(0.5)
    page.screenshot(path=str(tmp_path / "after-submit.png"))
    assert answered, f"no response arrived; screenshots in {tmp_path}"

    result = prefab("pull", "--run", run.path)
    assert result.exit_code == 0, result.output
    labels = run.read("labels").filter(pl.col("annotator") == user.username)
    assert labels.height == 1
    label = labels.row(0, named=True)

    # which pair was on screen, and was its response A the chosen candidate?
    prompts = run.read("prompts").explode("messages").filter(pl.col("messages").struct.field("content") == prompt)
    pair = run.read("pairs").filter(pl.col("prompt_id") == prompts["prompt_id"][0]).row(0, named=True)
    texts = dict(run.read("candidates").select("candidate_id", "text").iter_rows())
    assert response_a in (texts[pair["chosen_id"]], texts[pair["rejected_id"]])
    expected = "chosen" if response_a == texts[pair["chosen_id"]] else "rejected"
    assert (label["pair_id"], label["status"], label["label_ab"]) == (pair["pair_id"], "submitted", "a")
    assert label["label"] == expected
    assert label["rationale"] == "A has the right sum"
    assert (tmp_path / "after-submit.png").stat().st_size > 10_000
