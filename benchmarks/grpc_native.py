"""Server CPU per unary gRPC call: grpc.aio's server against the native one (serving/transport/rpc/native.py),
both serving the same constant-answer KServe ModelInfer servicer on uvloop, driven by grpcio's aio client in
another process (closed loop, 64 and 1 calls in flight, one connection). The figure is Δ(utime + stime) of the
server process from /proc/PID/stat over the measured calls, divided by their number; 3 rounds, the servers
interleaved in each round, min and median reported (the method of ../shared/notes/grpc-transport.md).

    python benchmarks/grpc_native.py [--rounds 3] [--calls 20000] [--calls-1 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # noqa: E402 - a script run from a checkout

from serving._proto.inference import grpc_predict_v2_pb2 as pb  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


class Constant:
    """KServe's ModelInfer answering one constant message (the transport is what is measured)."""

    SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    access_log = None
    ANSWER = pb.ModelInferResponse(model_name="m", id="1", raw_output_contents=[b"\x00" * 32])

    async def ModelInfer(self, request: object, context: object) -> object:  # noqa: N802 - gRPC's name
        return self.ANSWER


async def serve(kind: str, port: int) -> None:
    if kind == "native":
        from serving.transport.rpc.native import new_native_server
        native = new_native_server([Constant()])
        await native.start("127.0.0.1", port)
    else:
        from serving.transport.rpc.server import listen, new_server
        server = new_server([Constant()], auth=None, admin_auth=None, access_log=None, reuse_port=False)
        await listen(server, "127.0.0.1", port, "bench", "bench")
    print("ready", flush=True)
    await asyncio.Event().wait()


async def client(port: int, inflight: int, calls: int, warmup: int) -> None:
    import grpc

    from serving._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc
    request = pb.ModelInferRequest(model_name="m", id="1", raw_input_contents=[b"\x01" * 128])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer

        async def loop(n: int) -> None:
            for _ in range(n):
                await infer(request)

        await asyncio.gather(*[loop(warmup // inflight) for _ in range(inflight)])
        print("start", flush=True)
        started = time.perf_counter()
        await asyncio.gather(*[loop(calls // inflight) for _ in range(inflight)])
        print(f"done {time.perf_counter() - started:.3f}", flush=True)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def measure(kind: str, inflight: int, calls: int, port: int) -> tuple[float, float]:
    """(µs of server CPU per call, calls/s) of one fresh server and client."""
    me = [sys.executable, __file__]
    server = subprocess.Popen(["nice", "-n", "10", *me, "serve", kind, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        driver = subprocess.Popen(["nice", "-n", "10", *me, "client", str(port), str(inflight), str(calls),
                                   str(min(1000, calls))], stdout=subprocess.PIPE, text=True)
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == "start"
        before = cpu_ticks(server.pid)
        done = driver.stdout.readline().split()
        after = cpu_ticks(server.pid)
        driver.wait()
        measured = calls // inflight * inflight
        return (after - before) / TICK / measured * 1e6, measured / float(done[1])
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20000, help="measured calls at 64 in flight")
    parser.add_argument("--calls-1", type=int, default=3000, help="measured calls at 1 in flight")
    args = parser.parse_args()
    configs = [(kind, inflight) for inflight in (64, 1) for kind in ("grpcio", "native")]
    results: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in configs}
    port = 19000 + os.getpid() % 1000
    for round_ in range(args.rounds):
        for kind, inflight in configs:
            port += 1
            cpu, rate = measure(kind, inflight, args.calls if inflight > 1 else args.calls_1, port)
            results[(kind, inflight)].append((cpu, rate))
            print(f"round {round_ + 1} {kind:7s} {inflight:3d} in flight: {cpu:7.1f} us/call {rate:8.0f} calls/s",
                  flush=True)
    print("\n| server | in flight | µs of server CPU per call, min / median | calls/s, median |")
    print("|---|---|---|---|")
    for kind, inflight in configs:
        cpus = [c for c, _ in results[(kind, inflight)]]
        rates = [r for _, r in results[(kind, inflight)]]
        print(f"| {kind} | {inflight} | {min(cpus):.1f} / {statistics.median(cpus):.1f} | "
              f"{statistics.median(rates):.0f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("serve", "client"):
        import uvloop
        if sys.argv[1] == "serve":
            uvloop.run(serve(sys.argv[2], int(sys.argv[3])))
        else:
            uvloop.run(client(*(int(a) for a in sys.argv[2:6])))
    else:
        main()
