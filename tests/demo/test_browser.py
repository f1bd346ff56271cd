"""The demo in a real browser (Debian's chromium driven by Playwright), as a person uses it: type a prompt,
click run, watch all four panels finish; the AR panel shows what `blt-run generate` prints; the patcher plot
and the diffusion replay fill in; an empty prompt shows one clear message. Saves a screenshot of the race
(BLT_DEMO_SCREENSHOT=PATH keeps it, e.g. docs/images/demo-race.png)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("playwright")
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "class Stack:\n    def __init__(self"
MODES = ("ar", "bltd", "blts", "bltdv")
NEW_BYTES = 96


def _chromium() -> str:
    """Debian's chromium, installed with apt where it is missing (never `playwright install`)."""
    if not Path(CHROMIUM).exists() and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True, check=False,
                       capture_output=True)
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing and could not be installed (apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture(scope="module")
def page(demo_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.goto(demo_url, wait_until="domcontentloaded")
        page.wait_for_selector("#run", timeout=60_000)
        yield page
        browser.close()


def test_race_in_a_browser(page, blt_run, tmp_path):
    page.fill("#prompt textarea", PROMPT)
    number = page.locator("#max-new-bytes input[type=number]")
    number.fill(str(NEW_BYTES))
    number.press("Enter")
    page.click("#run")
    for mode in MODES:
        page.wait_for_selector(f'#out-{mode} .blt-panel[data-state="done"]', timeout=300_000)
    page.wait_for_selector("#summary table", timeout=60_000)
    shown = page.inner_text("#out-ar .blt-gen")
    assert shown == blt_run(PROMPT, "ar", NEW_BYTES)
    assert page.inner_text("#out-ar .blt-prompt") == PROMPT
    for mode in ("blts", "bltdv"):  # greedy verification is lossless: the same text, made differently
        assert page.inner_text(f"#out-{mode} .blt-gen") == shown
    titles = page.eval_on_selector_all("#out-blts .blt-gen span", "els => els.map(e => e.title)")
    assert any("accepted draft" in t for t in titles) and any("correction" in t for t in titles)
    titles = page.eval_on_selector_all("#out-bltd .blt-gen span", "els => els.map(e => e.title)")
    assert titles and all("diffusion at step" in t for t in titles)
    assert "same text as AR" in page.inner_text("#summary")
    page.wait_for_selector("#patcher svg polyline", timeout=60_000)
    assert "θ = " in page.inner_text("#patcher")
    shot = Path(os.environ.get("BLT_DEMO_SCREENSHOT") or tmp_path / "demo-race.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.get_by_role("tab", name="Diffusion replay").click()
    page.wait_for_selector("#replay .blt-cell", timeout=60_000)
    assert page.locator("#replay .blt-cell").count() == 8  # one row per position of a B = 8 block


def test_empty_prompt_shows_one_clear_message(page):
    page.fill("#prompt textarea", "")
    page.click("#run")
    page.get_by_text("the prompt is empty").first.wait_for(timeout=60_000)
    assert "Traceback" not in page.content()
