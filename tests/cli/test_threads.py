"""cpmc-prune's thread count: --threads, then OMP_NUM_THREADS, then torch's (the demo caps it)."""

from __future__ import annotations

import pytest
import torch

import cpmc_plugin.cli.commands as cli_main
from cpmc_plugin.cli import main
from cpmc_plugin.cli.settings import resolve_threads
from tests.cli.common import cli_error

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace every command by one that records the thread count it runs with."""
    seen: list[int] = []
    for name in cli_main.COMMANDS:
        monkeypatch.setitem(
            cli_main.COMMANDS, name, lambda args: seen.append(torch.get_num_threads())
        )
    return seen


REQUIRED = {
    "train": ["--model", "resnet20", "--out", "x.pt"],
    "prune": ["--checkpoint", "b.pt", "--out", "x.pt"],
    "finetune": ["--checkpoint", "b.pt", "--out", "x.pt"],
    "evaluate": ["--checkpoint", "b.pt"],
    "report": ["--baseline", "b.pt", "--checkpoint", "f.pt", "--out-dir", "r"],
    "demo": [],
}


@pytest.mark.parametrize("command", list(REQUIRED))
def test_threads_sets_torchs_thread_count_for_every_command(
    command: str, recorder: list[int], monkeypatch, capsys
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert main([command, *REQUIRED[command], "--threads", "2"]) == 0
    assert recorder == [2]
    assert f"cpmc-prune {command}: seed 0, 2 threads (--threads)" in capsys.readouterr().out
    assert torch.get_num_threads() == before  # given back to the caller


def test_omp_num_threads_is_honoured_without_threads(
    recorder: list[int], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert main(["evaluate", "--checkpoint", "b.pt"]) == 0
    assert main(["evaluate", "--checkpoint", "b.pt", "--threads", "2"]) == 0  # the flag wins
    assert recorder == [3, 2]
    assert "3 threads (OMP_NUM_THREADS)" in capsys.readouterr().out
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert main(["evaluate", "--checkpoint", "b.pt"]) == 0
    assert main(["demo"]) == 0  # small models: one thread unless told otherwise
    assert recorder[2:] == [torch.get_num_threads(), 1]
    printed = capsys.readouterr().out
    assert f"{recorder[2]} thread" in printed and "(torch's default)" in printed


def test_without_flag_or_variable_torchs_count_is_kept_and_the_demo_caps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert resolve_threads(None) == (2, "torch's default")
        assert resolve_threads(None, cap=1) == (1, "the demo's default: at most 1")
        assert resolve_threads(None, cap=4) == (2, "torch's default")
        assert resolve_threads(3, cap=1) == (3, "--threads")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "argument --threads: must be an integer >= 1, got 0"),
        ("-1", "argument --threads: must be an integer >= 1, got -1"),
        ("x", "argument --threads: 'x' is not an integer"),
        ("1.5", "argument --threads: '1.5' is not an integer"),
    ],
)
def test_bad_thread_counts_are_refused(value: str, message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", "b.pt", f"--threads={value}"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "x", "-2"])
def test_a_bad_omp_num_threads_is_refused(
    value: str, recorder: list[int], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    err = cli_error(["evaluate", "--checkpoint", "b.pt"], capsys)
    assert f"OMP_NUM_THREADS='{value}' is not a thread count (an integer >= 1)" in err
    assert "--threads N" in err and recorder == []
    assert main(["evaluate", "--checkpoint", "b.pt", "--threads", "1"]) == 0  # the flag wins
