"""Run inside a network namespace of its own (see test_service_browser.py): start `serve` on the
synthetic source, open the page in headless Chromium (selenium + Debian's chromium-driver), check
that the video plays and shows the generated colours, type a prompt, and print one JSON object.

    python tests/browser_check.py [SCREENSHOT.png]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_helpers import Served  # noqa: E402

from continuityseq_stream.demo.synthetic_source import decode_index, synthetic_frame  # noqa: E402

W, H = 192, 144
PROMPT = "a browser prompt"

CAPTURE = """
const v = document.getElementById('video');
if (!v.videoWidth) return null;
const c = document.createElement('canvas');
c.width = v.videoWidth; c.height = v.videoHeight;
const g = c.getContext('2d');
g.drawImage(v, 0, 0);
return {w: c.width, h: c.height, data: Array.from(g.getImageData(0, 0, c.width, c.height).data)};
"""


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900",
                "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--autoplay-policy=no-user-gesture-required", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait(fn, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} within {timeout} s")


def colour(capture) -> dict:
    img = np.array(capture["data"], np.uint8).reshape(capture["h"], capture["w"], 4)[..., :3]
    index = decode_index(img)
    return {"index": index,
            "diff": float(np.abs(img.astype(np.float32) - synthetic_frame(index, W, H)).mean()),
            "diff_other": float(np.abs(img.astype(np.float32) - synthetic_frame(index + 8, W, H)).mean())}


def main() -> dict:
    screenshot = sys.argv[1] if len(sys.argv) > 1 else None
    served = Served(["-WI", str(W), "-HI", str(H), "--lead", "0.5"], prompt="a red fox")
    result: dict = {}
    driver = None
    try:
        served.wait_for(lambda: served.status().get("frames_made", 0) > 0, what="the first frame")
        driver = browser()
        driver.get(served.url)
        t0 = wait(lambda: driver.execute_script("const v = document.getElementById('video');"
                                                "return v.currentTime > 0.5 ? v.currentTime : 0;"), what="playback")
        time.sleep(2.0)
        t1 = driver.execute_script("return document.getElementById('video').currentTime;")
        result["time"] = [t0, t1]
        result["colour"] = [colour(wait(lambda: driver.execute_script(CAPTURE), what="a frame")) for _ in range(3)]
        box = driver.find_element("id", "prompt")
        box.clear()
        box.send_keys(PROMPT)
        driver.find_element("id", "send-prompt").click()
        message = wait(lambda: (lambda t: t if "applies at chunk" in t else None)(
            driver.find_element("id", "message").text), what="the answer")
        result["message"] = message
        at = int(message.rsplit(" ", 1)[1])
        shown = wait(lambda: (lambda t: t if t == PROMPT else None)(driver.find_element("id", "status-prompt").text),
                     what="the prompt in the page's status")
        status = served.status()
        result.update(page_prompt=shown, applies_at=at, status_prompt=status["prompt"],
                      status_chunk=status["current_chunk"], viewers=status["viewers"],
                      page_chunk=driver.find_element("id", "status-chunk").text,
                      out_fps=driver.find_element("id", "out-fps").text,
                      connection=driver.find_element("id", "connection").text)
        if screenshot:
            time.sleep(1.0)
            driver.save_screenshot(screenshot)
        result["log_has_no_errors"] = not [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    finally:
        if driver is not None:
            driver.quit()
        result["exit"] = served.stop()
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
