"""Where a benchmark figure came from: command, machine, versions, commit and date."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import platform
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cpmc-plugin", "torch", "torchvision", "torch-pruning", "nni", "scikit-learn")


def git_output(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def provenance(device: str = "cpu") -> dict[str, Any]:
    """Command line, platform, thread count, package versions, git state and UTC date."""
    src_diff = git_output("diff", "HEAD", "--", "src")
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "loadavg": os.getloadavg(),
        "versions": {name: _version(name) for name in PACKAGES},
        "git_commit": git_output("rev-parse", "HEAD"),
        "src_diff_sha1": hashlib.sha1(src_diff.encode()).hexdigest() if src_diff else None,
    }
