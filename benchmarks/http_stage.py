"""The HTTP protocol's own cost per request, alone and steady: an HttpConnection on a fake transport fed
requests, answered at once (a trivial handler) or later (a future resolved at once, 8 requests a chunk),
min of 15 repeats of 20,000 requests. Quieter than hot_path.py's closed loop for a change of a few tenths of
a µs; give a checkout to time another tree (a `git worktree` of the commit before) with the same venv.

    python benchmarks/http_stage.py [CHECKOUT]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402

from serving.transport.http import (  # noqa: E402
    DeadlineWheel,
    Deferred,
    HttpConnection,
    HttpLimits,
    Request,
    Response,
)

REQUEST = (b"POST /v1/models/xgb:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 22\r\n\r\n"
           b'{"instances": [[1.0]]}')


class Transport:
    def write(self, data: bytes) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: return ("127.0.0.1", 1)
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def is_closing(self) -> bool: return False


async def main() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop)

    def later(request: Request) -> Deferred:
        future = loop.create_future()
        future.set_result(b"1")
        return Deferred(future, lambda f, _: Response(200, f.result()), None, time.monotonic() + 30,
                        lambda: Response(504, b""))

    now = HttpConnection(lambda r: Response(200, b'{"predictions":[0.5]}'), HttpLimits(), set(), wheel)
    deferred = HttpConnection(later, HttpLimits(), set(), wheel)
    for conn in (now, deferred):
        conn.connection_made(Transport())  # type: ignore[arg-type]
    best = [float("inf"), float("inf")]
    n = 20_000
    for _ in range(15):
        t0 = time.perf_counter()
        for _ in range(n):
            now.data_received(REQUEST)
        best[0] = min(best[0], (time.perf_counter() - t0) / n * 1e6)
        t0 = time.perf_counter()
        for _ in range(n // 8):
            for _ in range(8):
                deferred.data_received(REQUEST)
            await asyncio.sleep(0)  # the done callbacks run on the next turns
            await asyncio.sleep(0)
        best[1] = min(best[1], (time.perf_counter() - t0) / n * 1e6)
    print(f"{ROOT}: immediate {best[0]:.2f} µs, deferred {best[1]:.2f} µs a request (min of 15)")


if __name__ == "__main__":
    uvloop.run(main())
