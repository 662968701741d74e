"""Run inside a network namespace of its own (see test_service_webrtc.py): start `serve` on the
synthetic source, watch it with aiortc WHEP clients, print one JSON object with what they saw.

    python tests/webrtc_check.py

Viewer A reads frames for the whole check; viewer B reads for one second and then stops reading
(its peer connection stays open). Over A's data channel a prompt change is sent.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_helpers import Served  # noqa: E402

from continuityseq_stream.demo.synthetic_source import decode_index, synthetic_frame  # noqa: E402

W, H = 128, 96
WATCH_S = 8.0


async def whep(url: str, label: str):
    from aiortc import RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    channel = pc.createDataChannel("control")
    received = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def on_track(track):
        if not received.done():
            received.set_result(track)

    await pc.setLocalDescription(await pc.createOffer())
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "whep", data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"}) as resp:
            assert resp.status == 201, (resp.status, await resp.text())
            location = resp.headers["Location"]
            answer = await resp.text()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    track = await asyncio.wait_for(received, 30)
    return pc, track, channel, location


def colour_check(img: np.ndarray) -> dict:
    index = decode_index(img)
    mine = np.abs(img.astype(np.float32) - synthetic_frame(index, W, H)).mean()
    other = np.abs(img.astype(np.float32) - synthetic_frame(index + 8, W, H)).mean()
    return {"index": index, "diff": float(mine), "diff_other": float(other)}


async def read_frames(track, seconds: float, out: list) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        frame = await asyncio.wait_for(track.recv(), 10)
        out.append((time.monotonic(), frame.to_ndarray(format="rgb24")))


async def main() -> dict:
    served = Served(["-WI", str(W), "-HI", str(H), "--lead", "0.5"])
    result: dict = {}
    try:
        served.wait_for(lambda: served.status().get("frames_made", 0) > 0, what="the first frame")
        pc_a, track_a, chan_a, loc_a = await whep(served.url, "A")
        pc_b, track_b, chan_b, loc_b = await whep(served.url, "B")
        messages: list = []
        chan_a.on("message", lambda m: messages.append(json.loads(m)))
        frames_a, frames_b = [], []
        await asyncio.gather(read_frames(track_a, 1.0, frames_a), read_frames(track_b, 1.0, frames_b))
        stopped_at = time.monotonic()  # B stops reading here
        chunks_before = served.status()["chunks_made"]
        for _ in range(100):
            if chan_a.readyState == "open":
                break
            await asyncio.sleep(0.05)
        chan_a.send(json.dumps({"command": "set_prompt", "prompt": "a webrtc prompt", "transition": 0}))
        chan_a.send("{bad json")
        await read_frames(track_a, WATCH_S, frames_a)
        status = served.status()
        elapsed = time.monotonic() - stopped_at
        after = [img for t, img in frames_a if t > stopped_at + 1.0]
        checks = [colour_check(img) for img in after[::5]]
        result = {
            "frames_a": len(frames_a), "frames_b": len(frames_b), "after_b_stopped": len(after),
            "watch_s": elapsed - 1.0, "fps": status["out_fps"],
            "chunks_during": status["chunks_made"] - chunks_before, "chunk_s": 4 / status["out_fps"],
            "elapsed": elapsed, "colour": checks, "shape": list(after[0].shape) if after else None,
            "answers": [m for m in messages if m.get("type") == "answer"],
            "events": [m for m in messages if m.get("type") == "event"][-20:],
            "status_messages": len([m for m in messages if m.get("type") == "status"]),
            "viewers_status": status["viewers"],
        }
        async with aiohttp.ClientSession() as http:
            async with http.get(served.url + "metrics") as resp:
                result["metrics"] = [line for line in (await resp.text()).splitlines() if "viewer" in line]
            async with http.delete(served.url + loc_b.lstrip("/")) as resp:
                result["delete_status"] = resp.status
        await pc_a.close()
        await pc_b.close()
    finally:
        result["exit"] = served.stop()
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
