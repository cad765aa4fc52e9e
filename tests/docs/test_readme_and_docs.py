"""Every code block of the README (and of examples/README.md and docs/*.md) works as written.

Python blocks run in order, each in a fresh namespace, in an empty working directory,
exactly as pasted: a block defines what it uses (stand-ins for a training loop's data,
loss and learning rate are part of the block). Two conventions of the text:

- a block whose preceding paragraph says "Continuing the block above" runs after the
  blocks it continues, in their namespace (only within one section);
- a comment line ``# name = ...`` right after a line ``name = ...`` is an alternative
  (``# reg = SSRRegularizer(...)``): the block runs once more with it in place.

A block may import only the package's base dependencies, unless its section says which
extra to install (``pip install -e ".[nni]"``). Bash blocks are checked without running
anything long: every ``cpmc-prune`` command parses, every extra named exists, and the
console script answers ``--help``.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted(ROOT.glob("docs/*.md"))]
CONTINUES = re.compile(r"continuing the block above", re.IGNORECASE)
# Modules a block may import only where its section names the extra that installs them.
EXTRA_OF = {
    "torchvision": "vision",
    "nni": "nni",
    "cpmc_plugin.nni": "nni",
    "transformers": "transformers",
    "timm": "timm",
}
PACKAGE_OF_EXTRA = {
    "vision": "torchvision",
    "nni": "nni",
    "transformers": "transformers",
    "timm": "timm",
}
# Distribution names of the base dependencies that import under another name.
IMPORT_NAME = {"torch-pruning": "torch_pruning", "scikit-learn": "sklearn"}


@dataclass
class Block:
    """One fenced code block and where it stands."""

    document: str  # path relative to the repository
    section: str  # the nearest heading above it
    language: str
    code: str
    line: int  # 1-based line of its opening fence
    prose: str  # the text between the previous block (or heading) and this one
    section_text: str = ""  # the whole section, for the extras it names
    continues: Block | None = None
    ident: str = field(default="")


def _slug(heading: str) -> str:
    text = re.sub(r"[`*]", "", heading.lstrip("#").strip()).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def parse_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced blocks of a Markdown file, with their sections and ids."""
    lines = path.read_text().splitlines()
    document = path.relative_to(root).as_posix()
    blocks: list[Block] = []
    section, prose = "top", []
    sections: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if re.match(r"^#{1,6} ", line):
            section, prose = line.lstrip("#").strip(), []
        fence = re.match(r"^(\s*)```(\w+)\s*$", line)
        if fence:
            indent, language = len(fence.group(1)), fence.group(2)
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][indent:])
                i += 1
            assert i < len(lines), f"{document}: the block opened at line {start} is not closed"
            blocks.append(
                Block(document, section, language, "\n".join(body) + "\n", start, "\n".join(prose))
            )
            prose = []
        elif not stripped.startswith("```"):
            prose.append(line)
        sections.setdefault(section, []).append(line)
        i += 1
    counts: dict[str, int] = {}
    previous: dict[str, Block] = {}
    for block in blocks:
        block.section_text = "\n".join(sections[block.section])
        key = f"{block.document}::{_slug(block.section)}::{block.language}"
        counts[key] = counts.get(key, 0) + 1
        block.ident = f"{key}#{counts[key]}"
        if block.language == "python":
            before = previous.get(block.section)
            if CONTINUES.search(block.prose):
                assert before is not None, f"{block.ident} continues no block of its section"
                block.continues = before
            previous[block.section] = block
    return blocks


ALL_BLOCKS = [block for path in DOCUMENTS if path.exists() for block in parse_blocks(path)]
PYTHON = [block for block in ALL_BLOCKS if block.language == "python"]
BASH = [block for block in ALL_BLOCKS if block.language in ("bash", "sh", "shell", "console")]


def alternatives(code: str) -> list[tuple[str, str]]:
    """The block itself, and one variant per ``# name = ...`` alternative line."""
    lines = code.splitlines()
    variants = [("as-written", code)]
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)# (\w+) = (.+)$", line)
        if not match:
            continue
        indent, name = match.group(1), match.group(2)
        j = i - 1
        while j >= 0 and re.match(r"^\s*# \w+ = ", lines[j]):
            j -= 1  # several alternatives in a row replace the same line
        if j < 0 or not re.match(rf"^{indent}{name} = ", lines[j]):
            continue
        variant = list(lines)
        variant[j] = indent + line.strip()[2:]
        variants.append((f"alt{len(variants)}-{name}", "\n".join(variant) + "\n"))
    return variants


def python_cases() -> Iterator[Any]:
    for block in PYTHON:
        for name, code in alternatives(block.code):
            yield pytest.param(block, code, id=f"{block.ident}:{name}")


def imported_modules(code: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def pyproject() -> dict[str, Any]:
    """The ``[project]`` table of pyproject.toml."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def base_modules() -> set[str]:
    """Top-level import names of the base install: the dependencies and the package."""
    project = pyproject()
    names = {re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    return {IMPORT_NAME.get(name, name) for name in names} | {"cpmc_plugin"}


def extras_needed(block: Block) -> set[str]:
    """The extras a block's imports need beyond the base install."""
    base = base_modules() | set(sys.stdlib_module_names)
    needed: set[str] = set()
    for module in imported_modules(block.code):
        for prefix, extra in EXTRA_OF.items():
            if module == prefix or module.startswith(prefix + "."):
                needed.add(extra)
                break
        else:
            top = module.split(".")[0]
            assert top in base, f"{block.ident} imports {module}, which no install provides"
    return needed


def extras_named(text: str) -> set[str]:
    return {
        extra.strip()
        for group in re.findall(r"\.\[([\w,\s-]+)\]", text)
        for extra in group.split(",")
    }


def run_chain(block: Block, code: str) -> dict[str, Any]:
    """Run the blocks ``block`` continues, then ``code``, in one namespace."""
    chain: list[Block] = []
    earlier = block.continues
    while earlier is not None:
        chain.insert(0, earlier)
        earlier = earlier.continues
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    for part in chain:
        exec(compile(part.code, f"{part.ident} (line {part.line})", "exec"), namespace)
    exec(compile(code, f"{block.ident} (line {block.line})", "exec"), namespace)
    return namespace


# ---------------------------------------------------------------- the blocks are found
def test_the_readme_blocks_are_found() -> None:
    readme = [b for b in PYTHON if b.document == "README.md"]
    sections = {b.section for b in readme}
    # one tested block per entry point (a new one only adds to this)
    assert {
        "Prune to an exact FLOPs budget",
        "CPMC inside torch-pruning's own pruner",
        "Let the data choose CPMC's options (`cpmc-auto`)",
        "CPMC in NNI 3.0",
        "Sparse training, then prune",
        "Transformers: heads and MLP channels under one budget",
        "Paper models",
    } <= sections
    assert len(readme) >= 8
    docs = {b.document for b in PYTHON}
    assert {"docs/torch-pruning.md", "docs/sparse-training.md", "docs/transformers.md"} <= docs
    bnfista = next(b for b in PYTHON if b.ident.startswith("docs/sparse-training.md::bn-fista"))
    names = [name for name, _ in alternatives(bnfista.code)]
    assert names == ["as-written", "alt1-reg", "alt2-reg"]  # the two SSR alternatives


def test_alternatives_replace_the_line_they_follow() -> None:
    code = "a = 1\nreg = f(1)\n# reg = g(2)   # why\n# reg = h(3)\nb = reg\n# note = not code\n"
    variants = dict(alternatives(code))
    assert list(variants) == ["as-written", "alt1-reg", "alt2-reg"]
    assert variants["alt1-reg"].splitlines()[1] == "reg = g(2)   # why"
    assert variants["alt2-reg"].splitlines()[1] == "reg = h(3)"
    assert variants["alt2-reg"].splitlines()[2:] == code.splitlines()[2:]


def test_continuation_needs_the_text_to_say_so(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "## A\n\n```python\nx = 1\n```\n\nContinuing the block above:\n\n"
        "```python\ny = x + 1\n```\n\n## B\n\n```python\nz = 2\n```\n"
    )
    blocks = parse_blocks(doc, root=tmp_path)
    assert [b.continues is not None for b in blocks] == [False, True, False]
    assert run_chain(blocks[1], blocks[1].code)["y"] == 2
    with pytest.raises(NameError, match="name 'x' is not defined"):
        exec(blocks[1].code, {})


# ---------------------------------------------------------------- python blocks
@pytest.mark.parametrize(("block", "code"), list(python_cases()))
def test_python_block_runs_as_pasted(
    block: Block,
    code: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needed = extras_needed(block)
    missing = needed - extras_named(block.section_text)
    assert not missing, (
        f"{block.ident} needs the extra(s) {sorted(missing)}: say in its section which to "
        f'install (pip install -e ".[{",".join(sorted(missing))}]")'
    )
    for extra in sorted(needed):  # the block's section says to install it: skip without it
        pytest.importorskip(PACKAGE_OF_EXTRA[extra])
    monkeypatch.chdir(tmp_path)  # blocks may write files ("pruned.pt")
    torch.manual_seed(0)
    namespace = run_chain(block, code)
    assert set(assigned_names(code)) <= namespace.keys()
    check = CLAIMS.get(block.ident)
    if check is not None:
        check(namespace)


def assigned_names(code: str) -> list[str]:
    """The names a block binds at its top level."""
    names: list[str] = []
    for node in ast.parse(code).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            names.extend(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
    return names


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _budget_met(namespace: dict[str, Any]) -> None:
    """The text: MACs "reduced by the target within 0.5 percentage points"."""
    report = namespace["pruner"].report()
    assert abs(report.macs_reduction - 0.5) <= 0.005, report


def _reloaded_equals_pruned(namespace: dict[str, Any]) -> None:
    model, pruned, x = namespace["model"], namespace["pruned"], namespace["x"]
    assert pruned is not model and _params(pruned) == _params(model) < _params(namespace["fresh"])
    with torch.no_grad():
        assert torch.equal(pruned.eval()(x), model.eval()(x))


def _plan_tried_then_applied(namespace: dict[str, Any]) -> None:
    """The text: plan() prunes nothing, trial() puts the model back, step() applies."""
    pruner, plan = namespace["pruner"], namespace["plan"]
    initial = pruner.initial_counts.macs
    assert namespace["trial_macs"] < initial  # pruned inside the block
    assert abs(namespace["trial_macs"] - plan.cost) <= pruner.tolerance  # as planned
    assert pruner.report().macs_reduction == pytest.approx(0.4, abs=pruner.tolerance / initial)
    assert namespace["other"].removals != plan.removals  # another importance, another plan


def _nni_model_is_smaller(namespace: dict[str, Any]) -> None:
    from cpmc_plugin.models import create_model

    model, x = namespace["model"], namespace["x"]
    assert _params(model) < _params(create_model("resnet20", num_classes=10))
    with torch.no_grad():
        assert model(x).shape == (1, 10)


def _auxiliary_detached(namespace: dict[str, Any]) -> None:
    model, net = namespace["model"], namespace["net"]
    assert [h.fc.in_features for h in net.heads] == [16, 32]  # resnet20's layer1 and layer2
    optimized = {id(p) for group in namespace["optimizer"].param_groups for p in group["params"]}
    assert {id(p) for p in net.heads.parameters()} <= optimized  # the heads were trained
    assert not any(m._forward_hooks for m in model.modules())  # detached


def _models_listed(namespace: dict[str, Any]) -> None:
    block = next(b for b in PYTHON if b.ident == "README.md::paper-models::python#1")
    shown = re.search(r"list_models\(\)\s+# (\[.*\])", block.code)
    assert shown is not None
    assert namespace["list_models"]() == ast.literal_eval(shown.group(1))


# What the text around a block says it does, checked on the block's namespace.
CLAIMS: dict[str, Any] = {
    "README.md::prune-to-an-exact-flops-budget::python#1": _budget_met,
    "docs/torch-pruning.md::save-and-reload-a-pruned-model::python#1": _reloaded_equals_pruned,
    "README.md::cpmc-in-nni-3-0::python#1": _nni_model_is_smaller,
    "docs/torch-pruning.md::plan-first-try-a-plan-read-the-counts::python#1": (
        _plan_tried_then_applied
    ),
    "docs/sparse-training.md::oicsr-then-prune::python#2": _budget_met,
    "docs/sparse-training.md::bn-fista-and-ssr::python#1": _auxiliary_detached,
    "README.md::paper-models::python#1": _models_listed,
}


def test_every_claim_names_a_block() -> None:
    assert set(CLAIMS) <= {block.ident for block in PYTHON}


def test_the_torchvision_variant_the_quick_start_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text after the first block: "A torchvision model works the same way: `model = ...`"."""
    pytest.importorskip("torchvision")
    block = next(b for b in PYTHON if b.section == "Prune to an exact FLOPs budget")
    after = (ROOT / "README.md").read_text().split(block.code, 1)[1]
    paragraph = after.split("```", 1)[1].strip().split("\n\n", 1)[0]
    spans = re.findall(r"`([^`]+)`", paragraph)
    model = next(s for s in spans if s.startswith("model = "))
    x = next(s for s in spans if s.startswith("x = "))
    ignored = next(s for s in spans if s.startswith("ignored_layers="))
    code = "import torchvision\n" + block.code
    code = re.sub(r"^model = .*$", model, code, count=1, flags=re.MULTILINE)
    code = re.sub(r"^x = .*$", x, code, count=1, flags=re.MULTILINE)
    code = re.sub(r"ignored_layers=\[[^\]]*\]", ignored, code, count=1)
    assert "torchvision.models.resnet18" in code and "224, 224" in code and "model.fc" in code
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    _budget_met(run_chain(block, code))


# ---------------------------------------------------------------- bash blocks
def bash_commands(block: Block) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at &&."""
    joined = re.sub(r"\\\n\s*", " ", block.code)
    commands: list[list[str]] = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split("&&"):
            commands.append(shlex.split(part))
    return commands


CLI_COMMANDS = [
    (block, argv)
    for block in BASH
    for argv in bash_commands(block)
    if argv and argv[0] == "cpmc-prune"
]


def test_the_cli_commands_are_found() -> None:
    subcommands = {argv[1] for _, argv in CLI_COMMANDS}
    assert {"demo", "train", "prune", "finetune", "evaluate", "report"} <= subcommands


@pytest.mark.parametrize(
    "argv",
    [pytest.param(argv, id=f"{block.ident}:{' '.join(argv[:2])}") for block, argv in CLI_COMMANDS],
)
def test_cpmc_prune_command_parses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from cpmc_plugin.cli.commands import build_parser

    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as exit_:
        pytest.fail(
            f"`{shlex.join(argv)}` does not parse ({exit_.code}): {capsys.readouterr().err}"
        )
    assert args.command == argv[1]


def test_pip_commands_name_extras_that_exist() -> None:
    extras = set(pyproject()["optional-dependencies"])
    named = {extra for block in ALL_BLOCKS for extra in extras_named(block.code)}
    named |= {
        extra for path in DOCUMENTS if path.exists() for extra in extras_named(path.read_text())
    }
    assert named, "no pip install -e '.[extra]' found"
    assert named <= extras, f"unknown extras {sorted(named - extras)}; pyproject has {extras}"


def test_the_console_script_and_the_module_answer_help() -> None:
    script = shutil.which("cpmc-prune")
    if script is None:
        pytest.skip("the package is not installed with its console script")
    done = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for command in ("train", "prune", "finetune", "evaluate", "report", "demo"):
        assert command in done.stdout
    # torchrun ... -m cpmc_plugin.cli finetune: the package runs as a module
    import importlib.util

    assert importlib.util.find_spec("cpmc_plugin.cli.__main__") is not None


# ---------------------------------------------------------------- links and length
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())  # headings, not comments
    return {github_anchor(line) for line in text.splitlines() if re.match(r"^#{1,6} ", line)}


def test_github_anchor_by_hand() -> None:
    assert github_anchor("## CPMC in NNI 3.0") == "cpmc-in-nni-30"
    assert (
        github_anchor("### Let the data choose CPMC's options (`cpmc-auto`)")
        == "let-the-data-choose-cpmcs-options-cpmc-auto"
    )


@pytest.mark.parametrize("path", [p for p in DOCUMENTS if p.exists()], ids=lambda p: p.name)
def test_every_link_resolves(path: Path) -> None:
    """Every relative link names a file that exists and, with '#', a heading in it."""
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"


def test_the_readme_is_a_guide_not_a_notebook() -> None:
    """Under 400 lines, and a measured claim links to where it was measured."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 400
    prose = [line for line in lines if not line.startswith(("    ", "```"))]
    for line in prose:
        if re.search(r"\b20\d\d-\d\d-\d\d\b|\bcommit [0-9a-f]{7}\b", line):
            pytest.fail(f"README line {line!r}: dates and commits belong in docs/benchmarks.md")
    measured = [i for i, line in enumerate(prose) if "measured" in line.lower()]
    for i in measured:
        near = " ".join(prose[max(0, i - 1) : i + 2])
        assert "docs/benchmarks.md" in near, prose[i]
