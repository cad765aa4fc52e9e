"""Record the golden pruning results of ``cases.py`` into ``pruning.json``.

Run it against an archive of the commit to freeze, so that the package comes from that
commit and not from the working tree::

    export OMP_NUM_THREADS=1
    C=$(git -C /work/main rev-parse HEAD); rm -rf /tmp/golden && mkdir -p /tmp/golden
    git -C /work/main archive $C | tar -x -C /tmp/golden
    cd /work/main && PYTHONPATH=/tmp/golden/src python3 tests/golden/record.py --commit $C \
        --out tests/golden/pruning.json

The imported package must be ``src/cpmc_plugin`` of that commit, file for file
(``--commit`` names another commit than HEAD). Every case runs twice; a case whose two
runs differ is not deterministic and stops the recording. The file stores the commit,
where ``cpmc_plugin`` was imported from, the library versions (the test skips when they
differ) and each case's seconds (not compared).
An existing file is only replaced with ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after PYTHONPATH: the package still comes from there

from tests.golden.cases import (  # noqa: E402
    CASES,
    GOLDEN_FILE,
    processor,
    recorded_from,
    run_case,
    versions,
)

__all__ = ["main"]


def _git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def _differences(commit: str, package: Path) -> list[str]:
    """Files in which the imported package differs from ``src/cpmc_plugin`` at ``commit``."""
    listing = _git("ls-tree", "-r", commit, "--", "src/cpmc_plugin")
    wanted = {}
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        wanted[path.removeprefix("src/cpmc_plugin/")] = meta.split()[2]
    found = sorted(
        str(f.relative_to(package))
        for f in package.rglob("*")
        if f.is_file() and "__pycache__" not in f.parts
    )
    blobs = _git("hash-object", "--no-filters", *(str(package / f) for f in found)).split()
    have = dict(zip(found, blobs, strict=True))
    return sorted(f for f in set(wanted) | set(have) if wanted.get(f) != have.get(f))


def _scalar(value: object) -> bool:
    return not isinstance(value, (dict, list))


def _inline(values: list[object]) -> bool:
    """Scalars, or lists of scalars (a pruning-history entry): written on one line."""
    return all(_scalar(v) or (isinstance(v, list) and all(_scalar(w) for w in v)) for v in values)


def _dumps(value: object, depth: int = 0) -> str:
    """JSON with one key per line; a list of scalars, or of lists of scalars, on one line."""
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dumps(value[k], depth + 1)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and not _inline(value):
        items = [inner + _dumps(v, depth + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(value)


def main(argv: list[str] | None = None) -> int:
    """Record every case (or the named ones, for a look: then nothing is written)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=GOLDEN_FILE, help="JSON file to write")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument(
        "--commit", default=None, help="the commit the package comes from (default: HEAD)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="run these cases, write nothing")
    args = parser.parse_args(argv)

    if args.only is None and os.path.exists(args.out) and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it")
    origin = recorded_from()
    source = Path(origin["cpmc_plugin_file"]).resolve().parent
    commit = _git("rev-parse", args.commit or "HEAD")
    differ = _differences(commit, source)
    if differ:
        parser.error(
            f"cpmc_plugin imported from {source} is not src/cpmc_plugin of {commit[:12]} "
            f"({', '.join(differ[:5])}{', ...' if len(differ) > 5 else ''}): record from an "
            "archive of that commit (PYTHONPATH=<archive>/src), or name it with --commit"
        )
    print(f"cpmc_plugin from {source}; commit {commit}", flush=True)

    names = args.only or list(CASES)
    cases, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        first = run_case(name)
        seconds[name] = round(time.perf_counter() - start, 3)
        if run_case(name) != first:
            print(f"{name}: two runs differ; the case is not deterministic", file=sys.stderr)
            return 1
        cases[name] = first
        print(f"{name:40s} {seconds[name]:6.2f} s", flush=True)
    if args.only is not None:
        return 0
    data = {
        "recorded_from": {"commit": commit, **origin},
        "versions": versions(),
        "processor": processor(),
        "seconds": seconds,
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as file:
        file.write(_dumps(data) + "\n")
    print(f"wrote {len(cases)} cases to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
