"""Poll many small projects through the daemon's code path and print the cost.

The aim: on a 2-core machine the daemon polls 1,000 projects x 3 watches
a minute with CPU to spare. This bench writes a config with
``--projects`` projects, each watching the registrations, orders and events
presets, starts the fake API in a subprocess (``atleta-notifier fake-api``)
so that this process's CPU time is the notifier's alone, and polls every
watch with one shared client and one store, as the daemon does
(``engine.poll``, then the poll metrics), with the rate limiter set high.

Rounds, in this order:

1. baseline: the first poll of every watch (snapshots written, no events);
2. steady: ``--changes`` registrations were added meanwhile (each also adds
   an order), so a few watches report events and the rest find nothing;
3. steady, unchanged data: the case of most minutes;
4. raw HTTP: the same requests with a bare httpx client and ``json`` decode,
   no checks, diff or store: the floor any poller of this API pays;
5. client only: ``AtletaClient.fetch`` of every watch, no diff or store.

Rounds 3 to 5 fetch the same answers from the fake's warm cache, so their
difference is the notifier's own overhead. Columns: ``CPU s`` is this
process (event loop, store thread, everything), ``store s`` the store's
SQLite thread alone, ``GC s`` time in the cyclic collector, ``fake s`` the
fake API's process, which a real deployment does not pay (both read from
``/proc``, "n/a" elsewhere); ``errors`` counts failed polls after the
client's retries. Polls run ``--in-flight`` at a time, back to back, so the
wall time is capacity: the daemon spreads the same polls over the minute.
Usage::

    .venv/bin/python bench/bench_scale.py [--projects 1000] [--registrations 50]
        [--changes 20] [--concurrency 4] [--in-flight 16] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.util
import os
import pstats
import random
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from notifier import engine
from notifier.atleta import AtletaClient, declared_variables
from notifier.config import Config, load_config
from notifier.errors import PollError
from notifier.metrics import Metrics
from notifier.model import Watch
from notifier.store import Store

PRESETS = ("registrations", "orders", "events")
MINUTE = 3000
"""Polls a minute at the aimed-for scale: 1,000 projects x 3 watches."""
READY_LINE = "Ctrl-C stops it."
URL_PREFIX = "Fake Atleta API: "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument(
        "--registrations", type=int, default=50, help="per project (1 page at 100)"
    )
    parser.add_argument("--events", type=int, default=3, help="events per project")
    parser.add_argument(
        "--changes", type=int, default=20, help="registrations added before round 2"
    )
    parser.add_argument("--per-page", type=int, default=100)
    parser.add_argument(
        "--concurrency", type=int, default=4, help="[api] concurrency (requests)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=16, help="polls running at once"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="cProfile the unchanged steady round into this file",
    )
    return parser.parse_args(argv)


class FakeProcess:
    """``atleta-notifier fake-api`` in a subprocess, with its CPU time."""

    def __init__(self, args: argparse.Namespace, log: Path) -> None:
        self.token = secrets.token_urlsafe(24)
        self._log = log
        command = [
            sys.executable,
            "-c",
            "from notifier.cli import main; main()",
            "fake-api",
            "--port=0",
            f"--projects={args.projects}",
            f"--registrations={args.registrations}",
            f"--events={args.events}",
            f"--seed={args.seed}",
        ]
        env = {**os.environ, "FAKE_ATLETA_TOKEN": self.token}
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
            )
        self.url = self._wait_ready()
        self.base = self.url.rsplit("/api/", 1)[0]

    def _wait_ready(self) -> str:
        assert self.proc.stdout is not None
        url = None
        for line in self.proc.stdout:
            if line.startswith(URL_PREFIX):
                url = line.removeprefix(URL_PREFIX).strip()
            if line.strip() == READY_LINE and url:
                return url
        self.stop()
        raise RuntimeError(f"fake API did not start: {self._log.read_text()[-2000:]}")

    def cpu(self) -> float | None:
        """User + system CPU seconds of the fake so far (None off Linux)."""
        return proc_cpu(f"/proc/{self.proc.pid}/stat")

    def stop(self) -> None:
        """Interrupt the fake and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def write_config(
    path: Path, fake: FakeProcess, projects: list[str], concurrency: int, per_page: int
) -> None:
    """A config with one channel and every project watching the three presets."""
    lines = [
        "[api]",
        f'url = "{fake.url}"',
        f'token = "{fake.token}"',
        # The limiter set high: the bench measures us, not Atleta's pace.
        "rate_limit = 1000000.0",
        "burst = 100000",
        f"concurrency = {concurrency}",
        f"per_page = {per_page}",
        'timeout = "60s"',
        "[storage]",
        'path = "bench.sqlite"',
        "[defaults]",
        'interval = "1m"',
        'jitter = "5s"',
        "[channels.team]",
        'urls = ["console://"]',
    ]
    for code in projects:
        lines += ["[[projects]]", f'id = "{code}"', 'channels = ["team"]']
        for preset in PRESETS:
            lines += ["  [[projects.watches]]", f'  preset = "{preset}"']
    path.write_text("\n".join(lines) + "\n")


@dataclass(kw_only=True)
class Round:
    """The figures of one round of polls."""

    label: str
    polls: int
    wall: float
    cpu: float
    store_cpu: float | None
    gc: float
    fake_cpu: float | None
    events: int = 0
    errors: int = 0
    pages: int = 0

    HEADER = (
        f"  {'round':<28}{'wall s':>8}{'polls/s':>9}{'CPU s':>8}{'ms/poll':>9}"
        f"{'store s':>9}{'GC s':>7}{'fake s':>8}{'pages':>8}{'events':>8}"
        f"{'errors':>8}"
    )

    def line(self) -> str:
        """One printed row: wall, our CPU and its parts, the fake's CPU, pace."""
        return (
            f"  {self.label:<28}{self.wall:8.2f}{self.polls / self.wall:9.0f}"
            f"{self.cpu:8.2f}{self.cpu / self.polls * 1000:9.2f}"
            f"{_seconds(self.store_cpu):>9}{self.gc:7.2f}{_seconds(self.fake_cpu):>8}"
            f"{self.pages:8d}{self.events:8d}{self.errors:8d}"
        )


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def proc_cpu(path: str) -> float | None:
    """User + system CPU seconds from a ``/proc`` stat file (None off Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    # utime and stime are fields 14 and 15, counted from the pid.
    values = text.rsplit(")", 1)[1].split()
    return (int(values[11]) + int(values[12])) / os.sysconf("SC_CLK_TCK")


def store_thread_cpu() -> float | None:
    """CPU seconds of the store's SQLite thread so far (None off Linux)."""
    for thread in threading.enumerate():
        if thread.name.startswith("store") and thread.native_id is not None:
            return proc_cpu(f"/proc/self/task/{thread.native_id}/stat")
    return None


@contextmanager
def gc_timer() -> Iterator[list[float]]:
    """Sum the time the cyclic garbage collector runs within the block."""
    spent = [0.0]
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - started[0]

    gc.callbacks.append(callback)
    try:
        yield spent
    finally:
        gc.callbacks.remove(callback)


class Bench:
    """The parts one run shares: config, client, store, metrics, the fake."""

    def __init__(self, config: Config, fake: FakeProcess, in_flight: int) -> None:
        self.config = config
        self.fake = fake
        self.watches = [watch for watch in config.watches if watch.enabled]
        self.in_flight = in_flight
        self.metrics = Metrics()
        self.client: AtletaClient | None = None
        self.store: Store | None = None

    async def each(
        self, job: Callable[[Watch], Awaitable[tuple[int, int, int]]]
    ) -> tuple[int, int, int]:
        """Run ``job`` for every watch, ``in_flight`` at once; sum its counts."""
        gate = asyncio.Semaphore(self.in_flight)

        async def one(watch: Watch) -> tuple[int, int, int]:
            async with gate:
                return await job(watch)

        counts = await asyncio.gather(*(one(watch) for watch in self.watches))
        return (
            sum(c[0] for c in counts),
            sum(c[1] for c in counts),
            sum(c[2] for c in counts),
        )

    async def timed(
        self,
        label: str,
        job: Callable[[Watch], Awaitable[tuple[int, int, int]]],
        profile: Path | None = None,
    ) -> Round:
        """Run one round and measure it."""
        fake_before, store_before = self.fake.cpu(), store_thread_cpu()
        profiler = cProfile.Profile() if profile else None
        with gc_timer() as gc_spent:
            started, cpu_started = time.perf_counter(), time.process_time()
            if profiler is not None:
                profiler.enable()
            events, errors, pages = await self.each(job)
            if profiler is not None:
                profiler.disable()
            wall = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
        fake_after, store_after = self.fake.cpu(), store_thread_cpu()
        if profiler is not None and profile is not None:
            profiler.dump_stats(profile)
        return Round(
            label=label,
            polls=len(self.watches),
            wall=wall,
            cpu=cpu,
            store_cpu=_delta(store_before, store_after),
            gc=gc_spent[0],
            fake_cpu=_delta(fake_before, fake_after),
            events=events,
            errors=errors,
            pages=pages,
        )

    async def poll(self, watch: Watch) -> tuple[int, int, int]:
        """One poll as the daemon's job runs it: engine.poll, then the metrics."""
        assert self.store is not None
        assert self.client is not None
        outcome = await engine.poll(
            watch,
            client=self.client,
            store=self.store,
            channels=self.config.channels,
        )
        name = "ok" if outcome.error is None else outcome.error.kind
        self.metrics.observe_poll(
            watch.id, name, outcome.ms / 1000, [event.type for event in outcome.events]
        )
        return len(outcome.events), int(outcome.error is not None), outcome.pages

    async def fetch(self, watch: Watch) -> tuple[int, int, int]:
        """The client's walk of one watch, nothing else."""
        assert self.client is not None
        try:
            result = await self.client.fetch(watch)
        except PollError:
            return 0, 1, 0
        return 0, int(not result.complete), result.pages


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


class RawPoller:
    """The same requests through a bare httpx client: post, decode, next page."""

    def __init__(self, config: Config) -> None:
        api = config.api
        self.url = api.url
        self.gate = asyncio.Semaphore(api.concurrency)
        self.http = httpx.AsyncClient(
            timeout=api.timeout,
            limits=httpx.Limits(
                max_connections=api.concurrency,
                max_keepalive_connections=api.concurrency,
            ),
        )

    async def fetch(self, watch: Watch) -> tuple[int, int, int]:
        """Every page of ``watch``, decoded and counted."""
        headers = {"Authorization": f"Bearer {watch.token}"}
        page, last, records = 1, 1, 0
        while page <= last:
            variables: dict[str, Any] = {"page": page, "per_page": watch.per_page}
            if "project" in declared_variables(watch.query):
                variables["project"] = watch.project.id
            async with self.gate:
                try:
                    response = await self.http.post(
                        self.url,
                        json={"query": watch.query, "variables": variables},
                        headers=headers,
                    )
                except httpx.TransportError:
                    return 0, 1, page - 1
            node: Any = response.json()["data"]
            for step in watch.records.split(".")[:-1]:
                node = node[step]
            last = int(node.get("last_page") or 1)
            records += len(node["data"])
            page += 1
        return 0, 0, page - 1


async def mutate(fake: FakeProcess, projects: list[str], count: int, seed: int) -> None:
    """Add ``count`` registrations to random projects through the control routes."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with httpx.AsyncClient(base_url=fake.base, headers=headers) as http:
        for code in rng.sample(projects, min(count, len(projects))):
            response = await http.post(
                "/_control/add_registration", json={"project": code}
            )
            response.raise_for_status()


async def run(
    bench: Bench, args: argparse.Namespace, projects: list[str]
) -> list[Round]:
    """The five rounds, in order."""
    rounds = []
    bench.client = engine.Engine.client_for(bench.config)
    bench.store = await Store.open(bench.config.storage.path)
    raw = RawPoller(bench.config)
    try:
        rounds.append(await bench.timed("1 baseline (first polls)", bench.poll))
        await mutate(bench.fake, projects, args.changes, args.seed)
        rounds.append(
            await bench.timed(f"2 steady, {args.changes} new regs", bench.poll)
        )
        rounds.append(
            await bench.timed("3 steady, unchanged", bench.poll, args.profile)
        )
        rounds.append(await bench.timed("4 raw HTTP (floor)", raw.fetch))
        rounds.append(await bench.timed("5 client fetch only", bench.fetch))
    finally:
        await raw.http.aclose()
        await bench.client.aclose()
        await bench.store.close()
    return rounds


def report(rounds: list[Round], args: argparse.Namespace) -> None:
    """Print every round, our share of each poll, and what 3,000 polls a minute cost."""
    print(Round.HEADER)
    for item in rounds:
        print(item.line())
    first, busy, steady, raw, client = rounds
    polls = steady.polls

    def ms(item: Round) -> float:
        return item.cpu / polls * 1000

    print(
        f"\nCPU per poll, steady unchanged: {ms(steady):.2f} ms = raw HTTP "
        f"{ms(raw):.2f} ms + client walk checks {ms(client) - ms(raw):+.2f} ms + "
        f"diff, store and metrics {ms(steady) - ms(client):+.2f} ms "
        f"(x{steady.cpu / raw.cpu:.1f} the raw HTTP floor)"
    )
    print(f"{MINUTE:,} polls a minute (1,000 projects x 3 watches) at these paces:")
    for name, item in (
        ("steady, unchanged", steady),
        (f"steady, {args.changes} new regs", busy),
        ("first start (baselines)", first),
    ):
        cpu = item.cpu / polls * MINUTE
        wall = item.wall / polls * MINUTE
        print(
            f"  {name:<28} {cpu:5.1f} CPU-s = {cpu / 60:4.0%} of one core, "
            f"{cpu / 120:4.0%} of 2 cores; {wall:5.1f} s wall of the 60"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the bench process: {rss:.0f} MiB")
    if importlib.util.find_spec("sniffio") is None:
        print(
            "note: sniffio is not installed, so httpcore retries a failed import "
            "several times per request; installing it cuts the HTTP cost"
        )


@contextmanager
def fake_api(args: argparse.Namespace, directory: Path) -> Iterator[FakeProcess]:
    """The fake API subprocess, stopped on exit."""
    started = time.perf_counter()
    fake = FakeProcess(args, directory / "fake.log")
    try:
        print(
            f"fake API: {args.projects} projects x {args.registrations} "
            f"registrations, {args.events} events, up in "
            f"{time.perf_counter() - started:.1f} s (pid {fake.proc.pid})"
        )
        yield fake
    finally:
        fake.stop()


def project_codes(fake: FakeProcess) -> list[str]:
    """The fake's project codes, from its state route."""
    response = httpx.get(
        f"{fake.base}/_control/state",
        headers={"Authorization": f"Bearer {fake.token}"},
        timeout=60,
    )
    response.raise_for_status()
    return list(response.json()["projects"])


def main(argv: list[str] | None = None) -> None:
    """Start the fake, write the config, run the rounds and print the figures."""
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        fake_api(args, Path(tmp)) as fake,
    ):
        directory = Path(tmp)
        projects = project_codes(fake)
        path = directory / "bench.toml"
        write_config(path, fake, projects, args.concurrency, args.per_page)
        started = time.perf_counter()
        config = load_config(path, environ={})
        print(
            f"config: {len(config.watches)} watches loaded in "
            f"{time.perf_counter() - started:.2f} s; concurrency "
            f"{args.concurrency}, {args.in_flight} polls in flight, per_page "
            f"{args.per_page}, rate limit off"
        )
        bench = Bench(config, fake, args.in_flight)
        rounds = asyncio.run(run(bench, args, projects))
    report(rounds, args)
    if args.profile:
        print(f"\nprofile of round 3 in {args.profile}; top functions by own time:")
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
