"""Walk a large project on the fake Atleta API and print the client's pace.

The rate limiter is set high, so the figures measure the client (requests,
JSON decoding, walk checks) and the fake server sharing this machine, not
Atleta's rate limit; the client's own CPU time is printed apart. Usage::

    .venv/bin/python bench/bench_client.py [--registrations 100000]
        [--per-page 100] [--concurrency 4] [--walks 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from notifier.atleta import AtletaClient
from notifier.fake_atleta import FakeAtleta
from notifier.model import Project, Watch
from notifier.schema import PRESETS


def parse_args() -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registrations", type=int, default=100_000)
    parser.add_argument("--per-page", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--walks", type=int, default=2)
    return parser.parse_args()


async def walk(api: FakeAtleta, args: argparse.Namespace) -> None:
    """Fetch the project ``args.walks`` times and print each walk's figures."""
    preset = PRESETS["registrations"]
    watch = Watch(
        project=Project(id=api.project_ids[0], name="bench"),
        name="registrations",
        entity=preset.entity,
        query=preset.query,
        records=preset.records,
        key=preset.key,
        per_page=args.per_page,
        token=api.token,
    )
    async with AtletaClient(
        api.url,
        rate_limit=1_000_000.0,
        burst=100_000,
        concurrency=args.concurrency,
        timeout=120,
    ) as client:
        for number in range(1, args.walks + 1):
            started, cpu_started = time.perf_counter(), time.thread_time()
            result = await client.fetch(watch)
            seconds = time.perf_counter() - started
            # The fake serves from its own thread: this thread's CPU time is
            # the client's own cost.
            cpu = max(time.thread_time() - cpu_started, 1e-9)
            print(
                f"walk {number}: {len(result.records)} records, {result.pages} pages, "
                f"{result.requests} requests, complete={result.complete} in "
                f"{seconds:.2f} s: {result.pages / seconds:.1f} pages/s, "
                f"{len(result.records) / seconds:.0f} records/s; client CPU "
                f"{cpu:.2f} s ({len(result.records) / cpu:.0f} records/CPU-s)"
            )


def main() -> None:
    """Start the fake API with one large project and walk it."""
    args = parse_args()
    started = time.perf_counter()
    with FakeAtleta(seed=1, projects=1, registrations=args.registrations) as api:
        print(
            f"fake API with {args.registrations} registrations up in "
            f"{time.perf_counter() - started:.1f} s; per_page={args.per_page} "
            f"concurrency={args.concurrency}"
        )
        asyncio.run(walk(api, args))


if __name__ == "__main__":
    main()
