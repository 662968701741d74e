"""Run inside a network namespace of its own (see test_service_firefox.py): start `serve` on the
synthetic source, open the page in headless Firefox (Debian's firefox-esr, driven over WebDriver BiDi:
Debian has no geckodriver, and Firefox speaks BiDi itself on --remote-debugging-port), make the same
checks as browser_check.py (Chromium), and print one JSON object.

    python tests/firefox_check.py [SCREENSHOT.png]

The namespace needs a default route (ROUTE below): a page without a camera/microphone grant gets ICE
candidates only for the default route's source address (Firefox's "default address only" rule, which
no pref turns off), and a namespace with only `lo` has no route, so Firefox would gather nothing.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser_check import CAPTURE, H, PROMPT, W, colour, wait  # noqa: E402
from service_helpers import Served  # noqa: E402

# WebRTC between Firefox and aiortc on loopback only (the namespace has nothing else), host candidates
# as plain addresses (not mDNS names), and a muted autoplaying video without a user gesture.
PREFS = {
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.no_host": False,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
}
# the namespace's default route, through lo from 127.0.0.2 (nothing can leave the namespace anyway)
ROUTE = "ip route add default dev lo src 127.0.0.2"
ENTER = "\ue007"  # WebDriver's key code for Enter


def write_profile(folder: Path) -> None:
    """A fresh profile folder whose user.js holds PREFS."""
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in PREFS.items()]
    (folder / "user.js").write_text("\n".join(lines) + "\n")


class Firefox:
    """Headless firefox-esr with a fresh profile, and a BiDi session on it.

    The websocket lives on an asyncio loop in a thread of its own, so that the check itself reads
    as plain sequential calls (and can share browser_check's blocking `wait`)."""

    def __init__(self, ready_timeout: float = 90.0) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="ff-profile-"))
        write_profile(self.profile)
        self.proc = subprocess.Popen(
            ["firefox-esr", "--headless", "--no-remote", "--profile", str(self.profile),
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            env=dict(os.environ, MOZ_HEADLESS="1"))
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        url = self._listen_url(ready_timeout)
        self._run(self._connect(url + "/session"))
        self.capabilities = self.call("session.new", {"capabilities": {}})["capabilities"]
        self.call("session.subscribe", {"events": ["log.entryAdded"]})
        self.context = self.call("browsingContext.getTree", {})["contexts"][0]["context"]
        self.call("browsingContext.setViewport", {"context": self.context,
                                                  "viewport": {"width": 1100, "height": 900}})

    def _listen_url(self, timeout: float) -> str:
        """The websocket address Firefox prints on stderr (it picks a free port for port 0)."""
        found: list[str] = []
        seen: list[str] = []

        def read() -> None:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                seen.append(line)
                m = re.search(r"WebDriver BiDi listening on (ws://\S+)", line)
                if m and not found:
                    found.append(m.group(1))
            # keep draining after the line (an unread pipe can stall Firefox), until it exits

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not found and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.1)
        if not found:
            self.quit()
            raise AssertionError(f"firefox-esr printed no BiDi address in {timeout} s: {''.join(seen)[-2000:]}")
        return found[0]

    def _run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self, url: str) -> None:
        import aiohttp

        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(url, max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        """Route command results to their callers; keep the page's console errors."""
        async for msg in self._ws:
            data = json.loads(msg.data)
            if data.get("type") == "event":
                entry = data["params"]
                if data["method"] == "log.entryAdded" and entry.get("level") == "error":
                    self.errors.append(entry.get("text", ""))
            elif data.get("id") in self._pending:
                self._pending.pop(data["id"]).set_result(data)

    async def _call(self, method: str, params: dict) -> dict:
        ident = next(self._ids)
        future = self._loop.create_future()
        self._pending[ident] = future
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        return await future

    def call(self, method: str, params: dict, timeout: float = 60.0) -> dict:
        """One BiDi command; its result, or AssertionError with Firefox's error message."""
        data = self._run(self._call(method, params), timeout)
        if data.get("type") == "error":
            raise AssertionError(f"{method}: {data.get('error')}: {data.get('message')}")
        return data["result"]

    def js(self, body: str):
        """Run a function body in the page (like selenium's execute_script); its return value through
        JSON (BiDi's own serialisation of objects is a nested list form, JSON is simpler here)."""
        fn = f"async () => JSON.stringify(await (async () => {{ {body} }})() ?? null)"
        result = self.call("script.callFunction", {"functionDeclaration": fn, "awaitPromise": True,
                                                   "target": {"context": self.context}})
        if result["type"] == "exception":
            raise AssertionError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return json.loads(result["result"]["value"])

    def text(self, element_id: str) -> str:
        return self.js(f"return document.getElementById({json.dumps(element_id)}).innerText;")

    def navigate(self, url: str) -> None:
        self.call("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def type_keys(self, text: str) -> None:
        """Real key presses into the focused element."""
        keys = []
        for ch in text:
            keys += [{"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch}]
        self.call("input.performActions", {"context": self.context,
                                           "actions": [{"type": "key", "id": "keyboard", "actions": keys}]})

    def screenshot(self, path: str) -> None:
        data = self.call("browsingContext.captureScreenshot", {"context": self.context})["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def quit(self) -> None:
        """Close the browser (BiDi browser.close), kill its process group if it lingers, drop the profile."""
        if getattr(self, "_ws", None) is not None:
            try:
                self.call("browser.close", {}, timeout=10)
            except Exception:  # noqa: BLE001 - the socket may close before the answer: the kill below covers it
                pass
            self._run(self._http.close(), 10)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        shutil.rmtree(self.profile, ignore_errors=True)


def main() -> dict:
    screenshot = sys.argv[1] if len(sys.argv) > 1 else None
    served = Served(["-WI", str(W), "-HI", str(H), "--lead", "0.5"], prompt="a red fox")
    result: dict = {"browser": None}
    ff = None
    try:
        served.wait_for(lambda: served.status().get("frames_made", 0) > 0, what="the first frame")
        ff = Firefox()
        result["browser"] = f"{ff.capabilities['browserName']} {ff.capabilities['browserVersion']}"
        ff.navigate(served.url)
        t0 = wait(lambda: ff.js("const v = document.getElementById('video');"
                                "return v.currentTime > 0.5 ? v.currentTime : 0;"), what="playback")
        time.sleep(2.0)
        t1 = ff.js("return document.getElementById('video').currentTime;")
        result["time"] = [t0, t1]
        result["colour"] = [colour(wait(lambda: ff.js(CAPTURE), what="a frame")) for _ in range(3)]
        ff.js("const box = document.getElementById('prompt'); box.value = ''; box.focus();")
        ff.type_keys(PROMPT + ENTER)  # the page sends on Enter
        message = wait(lambda: (lambda t: t if "applies at chunk" in t else None)(ff.text("message")),
                       what="the answer")
        result["message"] = message
        at = int(message.rsplit(" ", 1)[1])
        shown = wait(lambda: (lambda t: t if t == PROMPT else None)(ff.text("status-prompt")),
                     what="the prompt in the page's status")
        status = served.status()
        result.update(page_prompt=shown, applies_at=at, status_prompt=status["prompt"],
                      status_chunk=status["current_chunk"], viewers=status["viewers"],
                      page_chunk=ff.text("status-chunk"), out_fps=ff.text("out-fps"),
                      connection=ff.text("connection"))
        if screenshot:
            time.sleep(1.0)
            ff.screenshot(screenshot)
        result["console_errors"] = list(ff.errors)
    finally:
        if ff is not None:
            ff.quit()
        result["exit"] = served.stop()
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
