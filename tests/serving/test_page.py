"""The playground page in a real headless Chromium (Debian's `chromium`, driven by Selenium
through `chromedriver`): choose an adapter, send a prompt, see the answer stream in, and the
adapter's loss curve beside it. A screenshot goes to test-output/playground.png."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from adaptool.generate import generate
from adaptool.plugins import load_plugins, use_plugins
from adaptool.serving.server import open_engine, running
from tests.helpers import trained

KEY = "sk-page-test"
PROMPT = "“Well done is better than well said.” ->:"
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, (
        "the page test drives Debian's chromium: apt-get install chromium chromium-driver "
        "(.ci/run does)"
    )
    options = Options()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,900")
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    yield chrome
    chrome.quit()


def test_the_page_streams_the_chosen_adapters_answer(browser, tmp_path, tiny_bloom_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    use_plugins(load_plugins(entry_points=False, strict=False, disabled=[]))
    adapter = trained(tmp_path, tiny_bloom_dir, name="tagger")
    engine = open_engine([("tagger", str(adapter))])
    tokens = 300
    engine.model.set_adapter("tagger")
    expected = generate(engine.model, engine.tokenizer, [PROMPT], max_new_tokens=tokens)[0]
    with running(engine, api_key=KEY) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        key = browser.find_element(By.ID, "key")
        key.send_keys(KEY)
        browser.find_element(By.ID, "prompt").click()  # the key is taken on change
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#models input"))
        for box in browser.find_elements(By.CSS_SELECTOR, "#models input"):
            if box.is_selected() != (box.get_attribute("value") == "tagger"):
                box.click()
        tokens_box = browser.find_element(By.ID, "max_tokens")
        tokens_box.clear()
        tokens_box.send_keys(str(tokens))
        browser.find_element(By.ID, "prompt").send_keys(PROMPT)
        browser.find_element(By.ID, "send").click()
        answer = wait.until(
            lambda b: b.find_element(By.CSS_SELECTOR, '.answer[data-model="tagger"]')
        )
        seen = set()
        deadline = time.monotonic() + 120
        while answer.get_attribute("data-finished") is None and time.monotonic() < deadline:
            seen.add(len(answer.get_attribute("textContent")))
            time.sleep(0.01)
        assert answer.get_attribute("data-finished") in ("stop", "length")
        assert answer.get_attribute("textContent") == expected.output
        assert any(0 < n < len(expected.output) for n in seen)  # part of it, then the rest
        panels = browser.find_elements(By.CSS_SELECTOR, ".panel")
        assert [p.get_attribute("data-model") for p in panels] == ["tagger"]
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".panel svg polyline"))
        assert "lora" in panels[0].find_element(By.CSS_SELECTOR, ".meta").text
        OUTPUT.mkdir(exist_ok=True)
        browser.save_screenshot(str(OUTPUT / "playground.png"))
    assert (OUTPUT / "playground.png").stat().st_size > 1000
