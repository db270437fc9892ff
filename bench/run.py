"""Run every benchmark in bench/ and print their figures (``make bench``).

Each script runs in its own process, as it would standalone, at a modest
size by default so the whole run takes a few minutes; ``--full`` uses the
full sizes the notifier is meant to handle (a 100,000-record project,
1,000 projects x 3 watches). Figures vary with the load of the machine: compare
the lines of one run with each other (each script prints its own
baseline) rather than with another machine's. Usage::

    .venv/bin/python bench/run.py [--full] [--only scale] [--only engine]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (modest arguments, full-size arguments)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "client": (
        ["--registrations", "20000", "--walks", "2"],
        ["--registrations", "100000", "--walks", "2"],
    ),
    "engine": (
        ["--records", "100000", "--changes", "200"],
        ["--records", "100000", "--changes", "200"],
    ),
    "scale": (
        ["--projects", "300", "--changes", "10"],
        ["--projects", "1000", "--changes", "20"],
    ),
}


def parse_args() -> argparse.Namespace:
    """The runner's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full",
        action="store_true",
        help="the full sizes: 100,000 records, 1,000 projects x 3 watches",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHES),
        help="run only this benchmark (repeatable)",
    )
    return parser.parse_args()


def run(name: str, arguments: list[str]) -> bool:
    """Run ``bench/bench_<name>.py`` with ``arguments``; True when it succeeded."""
    script = HERE / f"bench_{name}.py"
    shown = " ".join([".venv/bin/python", f"bench/{script.name}", *arguments])
    print(f"\n=== {name}: {shown}", flush=True)
    started = time.perf_counter()
    code = subprocess.call([sys.executable, str(script), *arguments])
    seconds = time.perf_counter() - started
    status = "ok" if code == 0 else f"FAILED (exit {code})"
    print(f"=== {name}: {status} in {seconds:.0f} s", flush=True)
    return code == 0


def main() -> None:
    """Run the chosen benchmarks in turn and exit non-zero if one failed."""
    args = parse_args()
    names = args.only or list(BENCHES)
    failed = [
        name for name in names if not run(name, BENCHES[name][1 if args.full else 0])
    ]
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
