"""The status function's dashboard in headless Chromium (Debian's `chromium`, driven by Playwright for
Python over the DevTools protocol; no browser download): progress moves, the job ends, no token no data.

Needs /usr/bin/chromium (`apt-get install chromium`; `.ci/run` installs it) and the `playwright` package
(the dev extra; never `playwright install`); without them the tests fail, saying what is missing
(ALLOW_NO_BROWSER=1 skips them instead).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infra.local.processes import wait_until
from shared.domain.jobs import job_id_for
from tests.integration.pipeline_helpers import jsonl_records, upload

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The README's picture is refreshed on request (UPDATE_SCREENSHOTS=1); otherwise the test leaves the tree clean.
SCREENSHOT = ROOT / ("docs" if os.environ.get("UPDATE_SCREENSHOTS") else ".local/artifacts") / "dashboard.png"
# The emulator embeds in chunks of 32 items and counts each chunk when done: 160 items at 0.1 s each make
# five steps of 3.2 s, longer than the poller's 2 s interval plus the page's 2 s refresh, even under load.
SLOW_ITEMS, SECONDS_PER_ITEM = 160, 0.1


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Missing tools fail the test (CI installs them); ALLOW_NO_BROWSER=1 turns that into a skip.
    missing = None
    try:
        from playwright import sync_api
    except ImportError:
        missing = "playwright is not installed (it is in the dev extra: make setup)"
    if missing is None and not Path(CHROMIUM).is_file():
        missing = "no Chromium: apt-get update && apt-get install -y chromium"
    if missing:
        if os.environ.get("ALLOW_NO_BROWSER"):
            pytest.skip(missing)
        pytest.fail(missing)
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1360, "height": 520})
    try:
        yield context.new_page()
    finally:
        context.close()


def dashboard(env: dict[str, str]) -> str:
    return env["STATUS_URL"].rstrip("/") + "/dashboard"


def progress_above(page, job_id: str, above: float, below: float, timeout_ms: float) -> float:
    """Wait until the job's progress bar shows a value in (above, below]; return it."""
    handle = page.wait_for_function(
        """([id, above, below]) => {
             const bar = document.querySelector(`tr[data-job="${id}"] progress`);
             return bar && bar.value > above && bar.value <= below ? bar.value : false;
           }""",
        arg=[job_id, above, below], timeout=timeout_ms, polling=100,
    )
    return float(handle.json_value())


def test_progress_moves_until_the_job_succeeds(clean_stack, gemini_emulator, page):
    from playwright.sync_api import expect

    env = clean_stack.env
    for name, path in (("faq.jsonl", ROOT / "examples" / "faq.jsonl"), ("handbook.md", ROOT / "examples" / "handbook.md")):
        upload(env, name, path.read_bytes(), content_type="text/markdown" if name.endswith(".md") else "application/jsonl")
    page.goto(f"{dashboard(env)}#token={env['POLLER_TOKEN']}")
    assert "token" not in page.url, "the token leaves the address bar once read"
    expect(page.locator("tr[data-state=SUCCEEDED]")).to_have_count(2, timeout=60_000)

    gemini_emulator.set_faults({"seconds_per_item": SECONDS_PER_ITEM})
    texts = [f"passage {i}: notes on topic {i % 17} for the progress demo" for i in range(SLOW_ITEMS)]
    blob = upload(env, "slow/progress.jsonl", jsonl_records(texts))
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
    row = page.locator(f'tr[data-job="{job_id}"]')

    first = progress_above(page, job_id, 0, 99.9, 90_000)  # under way
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    second = progress_above(page, job_id, first, 100, 90_000)  # and moving
    assert 0 < first < second <= 100

    expect(row.locator(".state")).to_have_text("SUCCEEDED", timeout=120_000)
    expect(row.locator("progress")).to_have_js_property("value", 100)
    expect(row.locator("td.succeeded")).to_have_text(str(SLOW_ITEMS))
    expect(row.locator(".outputs")).to_contain_text("manifest.json")
    expect(page.locator("#problem")).to_be_hidden()


def test_without_a_valid_token_the_page_shows_no_data(clean_stack, page):
    from playwright.sync_api import expect

    env = clean_stack.env
    blob = upload(env, "secret/names.jsonl", jsonl_records(["a job whose name must not show"]))
    job_id = job_id_for(env["INPUT_BUCKET"], blob.name, blob.generation)
    api = env["STATUS_URL"].rstrip("/") + "/jobs"
    headers = {"Authorization": f"Bearer {env['POLLER_TOKEN']}"}
    wait_until(lambda: job_id in httpx.get(api, headers=headers, timeout=10).text, 60, 0.2, "the job in the API")

    page.goto(dashboard(env))  # no token at all
    expect(page.locator("#problem")).to_contain_text("unauthorised")
    expect(page.locator("#rows tr")).to_have_count(0)
    assert job_id not in page.content() and "secret/names" not in page.content()

    page.goto(f"{dashboard(env)}#token=not-the-token")
    expect(page.locator("#problem")).to_contain_text("unauthorised: invalid token")
    expect(page.locator("#rows tr")).to_have_count(0)
    assert page.evaluate("sessionStorage.length") == 0, "a refused token is forgotten"

    # The page carries no data and needs no token, and loads nothing from elsewhere (it works offline);
    # the API still refuses missing or wrong credentials.
    served = httpx.get(dashboard(env), timeout=10)
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in served.headers["content-security-policy"]
    assert " src=" not in served.text and "<link rel=\"stylesheet\"" not in served.text
    assert httpx.get(api, timeout=10).status_code == 401
    assert httpx.get(api, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    assert httpx.get(env["STATUS_URL"], timeout=10).status_code == 401
