"""The actor runtime's cost: a no-op request through one actor vs raw NATS, same run.

``direct`` is a bare nats-py responder on the same embedded server, with the
same message encoded and decoded the same way, so ``overhead`` is what the
actor base adds (task per message, deadline, in-flight registry, metrics).

    python -m bench.bus [--requests N] [--inflight K]
"""

from __future__ import annotations

import argparse
import os
import time

import anyio
import msgspec
import structlog

from bench._stats import dumps, percentile
from ragbus.config import NatsSettings, RuntimeSettings, Settings
from ragbus.runtime import Actor, Context, connect, endpoint
from ragbus.runtime.cli import EmbeddedNats
from ragbus.runtime.client import Client
from ragbus.runtime.connection import NATS
from ragbus.subjects import Request, Subjects, deadline_after


class Noop(Request, frozen=True, kw_only=True):
    payload: str = ""


def noop_subject(s: Subjects) -> str:
    return f"{s.prefix}.bench.noop"


class NoopActor(Actor):
    name = "bench-noop"

    @endpoint(noop_subject, request=Noop)
    async def noop(self, request: Noop, ctx: Context) -> Noop:
        return request


async def _timed(n: int, call: object) -> list[float]:
    samples: list[float] = []
    for _ in range(n):
        t = time.perf_counter_ns()
        await call()  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - t) / 1000)
    return samples


async def run(requests: int, inflight: int) -> dict[str, float]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    async with EmbeddedNats() as server:
        settings = Settings(nats=NatsSettings(url=server.url),
                            runtime=RuntimeSettings(concurrency=inflight))
        responder = await connect(settings.nats, name="bench-direct")
        requester: NATS = await connect(settings.nats, name="bench-client")
        encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder(Noop)

        async def echo(msg: object) -> None:
            request = decoder.decode(msg.data)  # type: ignore[attr-defined]
            await responder.publish(msg.reply, encoder.encode(request))  # type: ignore[attr-defined]

        await responder.subscribe("bench.direct", cb=echo)
        await anyio.lowlevel.checkpoint()
        await responder.flush()
        client = Client(requester)
        actor = NoopActor(settings)
        subject = noop_subject(actor.subjects)

        async def direct() -> None:
            msg = Noop(payload="x", deadline=deadline_after(5))
            reply = await requester.request("bench.direct", encoder.encode(msg), timeout=5)
            decoder.decode(reply.data)

        async def through_actor() -> None:
            await client.request(subject, Noop(payload="x"), Noop, timeout=5)

        async with anyio.create_task_group() as tg:
            await tg.start(actor.serve)
            for call in (direct, through_actor):  # warm both paths
                await _timed(200, call)
            direct_us: list[float] = []
            actor_us: list[float] = []
            for _ in range(5):  # interleave rounds so machine noise hits both alike
                direct_us += await _timed(requests // 5, direct)
                actor_us += await _timed(requests // 5, through_actor)

            done = 0
            total = max(requests, 5000)
            started = time.perf_counter()

            async def worker() -> None:
                nonlocal done
                while done < total:
                    done += 1
                    await through_actor()

            async with anyio.create_task_group() as load:
                for _ in range(inflight):
                    load.start_soon(worker)
            msgs_per_s = total / (time.perf_counter() - started)
            actor.request_stop()
        await responder.close()
        await requester.close()
    d50, a50 = percentile(direct_us, 50), percentile(actor_us, 50)
    return {
        "direct_us_p50": round(d50, 1),
        "actor_us_p50": round(a50, 1),
        "actor_us_p99": round(percentile(actor_us, 99), 1),
        "overhead_us_p50": round(a50 - d50, 1),
        "msgs_per_s": round(msgs_per_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    print(dumps(anyio.run(run, args.requests, args.inflight)))


if __name__ == "__main__":
    main()
