"""Benchmark: the wall time of short `digest` commands, which is mostly Python start-up (imports),
on a new install (`digest init` in a temporary folder: an empty database at the newest schema).

Prints, per command, the median and the fastest of --runs runs (each a new process, as an
operator or cron runs it), and `python -X importtime`'s total for `import digest.cli`.

    .venv/bin/python bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIGEST = [sys.executable, "-m", "digest"]
COMMANDS = [("--help",), ("editions",), ("db", "current")]


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def import_seconds(module: str) -> float:
    """`python -X importtime -c "import module"`: the cumulative time of its top-level import."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                          capture_output=True, text=True, check=True)
    total = 0
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
        if m and not m.group(2).startswith(" "):  # a top-level import (not nested under another)
            total += int(m.group(1))
    return total / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "digest.toml"
        subprocess.run([*DIGEST, "init", "--config", str(config), "--feed", str(Path(tmp) / "feed.xml")],
                       check=True, stdout=subprocess.DEVNULL)
        for command in COMMANDS:
            args = [*DIGEST, "--config", str(config), *command]
            wall(args)  # warm the file cache
            times = [wall(args) for _ in range(runs)]
            print(f"digest {' '.join(command):<12} median {statistics.median(times) * 1000:5.0f} ms,"
                  f" fastest {min(times) * 1000:5.0f} ms  ({runs} runs)", flush=True)
    imports = [import_seconds("digest.cli") for _ in range(5)]
    print(f"imports (python -c \"import digest.cli\") median {statistics.median(imports) * 1000:5.0f} ms (-X importtime, 5 runs)")


if __name__ == "__main__":
    main()
