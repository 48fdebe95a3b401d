"""CPU per streamed delta at steady state: Chambers against the floor (`bench.passthrough`).

    python -m bench.delta_cost [--streams 200] [--tokens 1500] [--token-text "tok "] [--window 10]

N long streams (one delta every 20 ms each) run through the floor, then through a `chambers serve` on
its embedded defaults; once all are streaming, the server's CPU time over `--window` seconds is divided
by the deltas it relayed. No turn starts or ends inside the window, so this is the per-delta cost
alone, which the capacity ramp mixes with the turns' fixed cost. Each delta of Chambers carries the
part's whole text so far (`message.part.updated`), so the cost grows with `--tokens` x `--token-text`.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp
from tests.support.server import ServerProcess

from bench.common import (
    FakeUpstreamProcess,
    PassthroughProcess,
    cpu_seconds,
    raise_fd_limit,
    reference_op_us,
    server_env,
    wait_until_warm,
)
from bench.load import DIRECT_BODY, TURN_BODY

GAP_S = 0.02


async def measure(
    url: str, key: str, pid: int, streams: int, window: float, chambers: bool
) -> dict[str, float]:
    """Start `streams` streams (100 a second), wait until all stream, then meter `pid` for `window` s."""
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:
        chats: list[str] = []
        for _ in range(streams if chambers else 0):
            async with http.post("/agent/v1/chat", json={"model": "openai/gpt-4o"}) as resp:
                resp.raise_for_status()
                chats.append((await resp.json())["id"])
        events = 0

        async def one(index: int) -> None:
            nonlocal events
            if chambers:
                request = http.post(f"/agent/v1/chat/{chats[index]}/respond", json=TURN_BODY)
            else:
                request = http.post("/v1/chat/completions", json=DIRECT_BODY)
            async with request as resp:
                async for chunk in resp.content.iter_any():
                    events += chunk.count(b"\n\n")

        tasks = []
        for index in range(streams):
            tasks.append(asyncio.create_task(one(index)))
            await asyncio.sleep(0.01)
        await asyncio.sleep(3.0)  # every stream is past its first delta
        cpu0, events0, t0 = cpu_seconds(pid), events, time.monotonic()
        await asyncio.sleep(window)
        cpu1, events1, t1 = cpu_seconds(pid), events, time.monotonic()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    deltas = streams * (t1 - t0) / GAP_S
    return {
        "cores": round((cpu1 - cpu0) / (t1 - t0), 3),
        "us_per_delta": round((cpu1 - cpu0) / deltas * 1e6, 1),
        "events_per_s_seen": round((events1 - events0) / (t1 - t0)),
    }


def main() -> None:
    """CLI: print the floor's and Chambers' CPU per delta."""
    parser = argparse.ArgumentParser(prog="python -m bench.delta_cost", description=__doc__)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=1500, help="deltas per answer (long enough to outlast)")
    parser.add_argument("--token-text", default="tok ")
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    if args.tokens * GAP_S < args.streams * 0.01 + 3.0 + args.window + 1.0:
        parser.error("--tokens too few: answers must outlast the ramp, the settling and the window")
    raise_fd_limit()
    print(f"reference op {reference_op_us()} µs (the VM's speed now; lower is faster)", flush=True)
    fake = FakeUpstreamProcess(tokens=args.tokens, ttft=0.15, gap=GAP_S)
    fake.args += ["--token-text", args.token_text]
    with fake as upstream:
        with PassthroughProcess(upstream.url) as floor:
            got = asyncio.run(measure(floor.url, "bench-key", floor.pid, args.streams, args.window, False))
            print(f"floor     {args.streams} streams: {got}", flush=True)
        data_dir = Path(tempfile.mkdtemp(prefix="chambers-delta-"))
        server = ServerProcess(data_dir, env=server_env(upstream.url))
        try:
            server.start(timeout=120)
            wait_until_warm(server.url)
            assert server.proc is not None and server.admin_key is not None
            got = asyncio.run(
                measure(server.url, server.admin_key, server.proc.pid, args.streams, args.window, True)
            )
            print(f"chambers  {args.streams} streams: {got}", flush=True)
        finally:
            server.stop()
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
