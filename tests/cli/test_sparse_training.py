"""cpmc-prune train/finetune --sparse: every method sparse-trains, then the checkpoint prunes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cpmc_plugin.cli import Checkpoint, main

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--train-subset", "200", "--batch-size", "50"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sparse") / "base.pt"
    assert main(["train", "--model", "resnet20", "--epochs", "1", "--out", str(out), *QUICK]) == 0
    return out


def _bn_scales(ckpt: Checkpoint) -> torch.Tensor:
    return torch.cat([v for k, v in ckpt.state_dict.items() if k.endswith("bn1.weight")])


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("oicsr", ["--lam", "0.5"]),
        ("bn-fista", ["--lam", "5.0", "--aux-at", "layer1", "layer2"]),
        ("ssr-l21", ["--lam", "1", "--rho", "1", "--update-every", "2"]),
        ("ssr-l20", ["--keep", "0.5", "--rho", "1"]),
    ],
)
def test_sparse_finetune_leaves_exact_zeros_and_a_plain_checkpoint(
    base: Path, tmp_path: Path, method: str, options: list[str]
) -> None:
    out = tmp_path / "sparse.pt"
    argv = ["finetune", "--checkpoint", str(base), "--epochs", "2", "--lr", "0.05"]
    assert main([*argv, "--sparse", method, *options, "--out", str(out), *QUICK]) == 0
    ckpt, original = Checkpoint.load(out), Checkpoint.load(base)
    assert ckpt.metrics["sparse"]["method"] == method
    assert ckpt.metrics["sparse"]["zero_groups"] > 0
    # auxiliary heads were detached: the same parameters as the model that went in
    assert ckpt.state_dict.keys() == original.state_dict.keys()
    model = ckpt.build()
    if method == "bn-fista":
        assert int((_bn_scales(ckpt) == 0).sum()) > 0
    else:  # a whole filter of some conv is exactly zero
        zero_rows = [
            int((m.weight.flatten(1).abs().sum(1) == 0).sum())
            for m in model.modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        assert sum(zero_rows) > 0
    criterion = {"oicsr": "oicsr", "bn-fista": "slimming"}.get(method, "ssr")
    pruned = tmp_path / "pruned.pt"
    prune = ["prune", "--checkpoint", str(out), "--criterion", criterion]
    assert main([*prune, "--flops-reduction", "0.4", "--out", str(pruned), *QUICK]) == 0
    assert Checkpoint.load(pruned).metrics["pruned"]["criterion"] == criterion


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rho", "1"], "--rho need --sparse"),
        (["--sparse", "oicsr", "--fista-momentum", "0"], "momentum is bn-fista's option"),
        (["--sparse", "ssr-l20"], "kind='l20' needs keep"),
        (["--sparse", "oicsr", "--keep", "0.5"], "SSR's options, not 'oicsr'"),
        (["--sparse", "ssr-l20", "--keep", "0.5", "--lam", "1"], "takes keep, not strength"),
        (["--sparse", "bn-fista", "--resume"], "--resume does not restore"),
        (["--aux-at", "layer9"], "modules the model does not have: ['layer9']"),
    ],
)
def test_bad_sparse_options_exit_2_and_write_nothing(
    base: Path, tmp_path: Path, options: list[str], message: str, capsys
) -> None:
    out = tmp_path / "never.pt"
    argv = ["finetune", "--checkpoint", str(base), "--epochs", "1", "--out", str(out)]
    assert main([*argv, *options, *QUICK]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_keep_outside_0_1_is_refused_by_the_parser(base: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--checkpoint", str(base), "--sparse", "ssr-l20", "--keep", "1.5",
              "--out", "x.pt"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "must be in (0, 1], got 1.5" in capsys.readouterr().err
