"""Screenshot of the playground serving a real model (headless Chromium via Selenium):
`python -m bench.screenshot --model-dir models/zoo/fashion-mnist --out docs/playground.png`."""
from __future__ import annotations

import argparse
from pathlib import Path

from .server_proc import serve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--label", default="sneaker")
    ap.add_argument("--deadline-ms", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("docs/playground.png"))
    a = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1100,760"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        with serve("--model-dirs", str(a.model_dir)) as url:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 20)
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#label option")) > 1)
            Select(driver.find_element(By.ID, "label")).select_by_value(a.label)
            driver.execute_script("const s = document.getElementById('deadline'); s.value = arguments[0];"
                                  "s.dispatchEvent(new Event('input'));", a.deadline_ms)
            driver.find_element(By.ID, "n").clear()
            driver.find_element(By.ID, "n").send_keys("4")
            driver.find_element(By.ID, "generate").click()
            wait.until(lambda d: d.execute_script("return document.body.dataset.done") == "1")
            a.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(a.out))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
