"""Run the pruner comparison as an NNI experiment through NNI's Python API.

    python examples/nni_experiment/run_experiment.py                # 3 trials, port 8080
    python examples/nni_experiment/run_experiment.py --port 8081 --trial-args "--epochs 2"

GridSearch walks the search space (``search_space.json``): one trial per pruner name.
Each trial (``trial.py``) prunes the same baseline with the pruner NNI chose and reports
accuracy and reductions. NNI's web UI is at http://localhost:PORT while it runs; the
experiment's files go under ``--workdir`` (default ``~/nni-experiments``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from nni.experiment import Experiment

HERE = Path(__file__).resolve().parent


def run(
    port: int = 8080,
    trial_args: str = "",
    workdir: str | None = None,
    max_trials: int = 3,
    python: str = sys.executable,
) -> list[dict[str, Any]]:
    """Run the experiment to completion; return one dict per trial (parameters, metrics)."""
    experiment = Experiment("local")
    experiment.config.experiment_name = "cpmc-vs-nni-pruners"
    experiment.config.trial_command = f"{shlex.quote(python)} trial.py {trial_args}".strip()
    experiment.config.trial_code_directory = HERE
    experiment.config.search_space = json.loads((HERE / "search_space.json").read_text())
    experiment.config.tuner.name = "GridSearch"
    experiment.config.max_trial_number = max_trials
    experiment.config.trial_concurrency = 1
    if workdir is not None:
        experiment.config.experiment_working_directory = workdir
    try:
        experiment.run(port)
        trials = experiment.export_data()
        statuses = {job.trialJobId: job.status for job in experiment.list_trial_jobs()}
    finally:
        experiment.stop()
    results = []
    for trial in trials:
        value = trial.value
        metrics = json.loads(value) if isinstance(value, str) else value
        if isinstance(metrics, (int, float)):
            metrics = {"default": metrics}
        results.append(
            {
                "trial": trial.trialJobId,
                "status": statuses.get(trial.trialJobId),
                "parameter": trial.parameter,
                **metrics,
            }
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--trial-args", default="", help="extra arguments for trial.py")
    parser.add_argument("--workdir", default=None, help="NNI's experiment working directory")
    args = parser.parse_args()
    for result in run(args.port, args.trial_args, args.workdir):
        print(
            f"{result['parameter']['pruner']:>13}: accuracy {result['default']:.2%} "
            f"(before fine-tune {result['before_finetune']:.2%}, baseline "
            f"{result['baseline']:.2%}), MACs -{result['macs_reduction']:.1%}, "
            f"params -{result['params_reduction']:.1%}"
        )


if __name__ == "__main__":
    main()
