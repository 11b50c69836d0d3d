"""The playground page in headless Chromium (Debian chromium + chromium-driver, Selenium)."""
import shutil
from pathlib import Path

import pytest

from tests.utils.server import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(not Path(CHROMEDRIVER).exists(), reason="chromium-driver not installed "
                                "(make test installs it)")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1100,800"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def test_playground_generates_and_tokens_follow_the_deadline(browser, tiny_model_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running_server(model_dirs=str(tiny_model_dir), backend="onnx", step_delay_ms=5) as (base, _):
        browser.get(base + "/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: d.find_element(By.ID, "model").get_attribute("value") == "tiny")
        labels = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#label option")]
        assert labels == ["(unconditional)", "zero", "one", "two"]

        def generate_with_deadline(ms: int) -> int:
            slider = browser.find_element(By.ID, "deadline")
            # move the slider the way a user does: set its value and fire the input event
            browser.execute_script("arguments[0].value = arguments[1];"
                                   "arguments[0].dispatchEvent(new Event('input'));", slider, ms)
            assert browser.find_element(By.ID, "deadline-value").text == f"{ms} ms"
            done = int(browser.execute_script("return Number(document.body.dataset.done || 0)"))
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda d: int(d.execute_script("return Number(document.body.dataset.done || 0)")) > done)
            imgs = browser.find_elements(By.CSS_SELECTOR, "#samples img")
            assert len(imgs) == 4
            assert all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) == 8
                       for i in imgs)
            return int(browser.execute_script("return Number(document.body.dataset.tokens)"))

        long_k = generate_with_deadline(1000)
        short_k = generate_with_deadline(40)  # 8 steps of 5 ms cannot fit with decode and response
        assert long_k == 8 and short_k < long_k
        assert browser.find_element(By.ID, "status").text == ""
        browser.save_screenshot(str(tmp_path / "playground.png"))
        assert (tmp_path / "playground.png").stat().st_size > 10_000
