"""Every code block in README.md and in the guides of the documentation site (docs/guides, in the site's order)
runs: the README and the guides stay true.

* ```python blocks are executed (a CuPy block is skipped when CuPy has no usable GPU; a torch block
  when PyTorch is not installed).
* ```bash blocks: each command is checked.  ``nnkit train`` / ``nnkit predict`` commands run for real
  (in a temporary folder, in order, so a later block can use a model an earlier one saved).
  ``pip install`` is what CI's ``.ci/run`` executes before the suite, and ``pytest`` is this very run,
  so those are only checked to be the documented set-up commands.  The benchmark report commands take
  minutes: their options are checked by parsing them (``--help`` would exit 0 without doing so).
"""
import pathlib
import re
import shlex

import pytest

import nnkit.tools.bench
from nnkit.tools.cli import main

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")


def _guides():
    """The guides in the order mkdocs.yml's nav gives them (a later guide may use a file an earlier one made)."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    return [ROOT / "docs" / path for path in re.findall(r":\s*(guides/[\w-]+\.md)\s*$", nav, flags=re.M)]


GUIDES = _guides()
ALL_TEXT = TEXT + "".join(g.read_text(encoding="utf-8") for g in GUIDES)
PY_BLOCKS = re.findall(r"```python\n(.*?)```", ALL_TEXT, flags=re.S)
BASH = [c.strip() for block in re.findall(r"```bash\n(.*?)```", ALL_TEXT, flags=re.S)
        for line in block.splitlines() if line.strip() for c in line.split("&&")]


def test_every_guide_is_in_the_site_and_the_readme_is_a_few_screens():
    assert sorted(GUIDES) == sorted((ROOT / "docs" / "guides").glob("*.md"))
    assert len(TEXT.splitlines()) <= 300
    for link in re.findall(r"\]\((docs/[^)#]+)", TEXT):  # the README's links into the site point at real pages
        assert (ROOT / link).exists(), link


def test_the_readme_lists_every_command_of_the_cli():
    import argparse

    from nnkit.tools.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    table = TEXT[TEXT.index("## The commands"):]
    listed = re.findall(r"^\| `nnkit (\w+)` \|", table, flags=re.M)
    assert sorted(listed) == sorted(sub.choices)


def test_readme_states_the_two_setup_commands():
    assert "pip install -e . && nnkit train" in TEXT
    assert 'pip install -e ".[test]" && pytest\n' in TEXT  # the quick tier, first
    assert 'pip install -e ".[test]" && pytest --full' in TEXT  # the whole suite: what .ci/run runs
    assert len(PY_BLOCKS) >= 3


@pytest.mark.parametrize("code", PY_BLOCKS, ids=[f"python{i}" for i in range(len(PY_BLOCKS))])
def test_readme_python_block_runs(code, tmp_path, monkeypatch, capsys):
    if "import cupy" in code:
        why = nnkit.tools.bench.why_unavailable("cupy")
        if why:
            pytest.skip(why)
    if "import torch" in code:
        pytest.importorskip("torch")
    if "import onnxruntime" in code:
        pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    for claimed in re.findall(r"#.*'accuracy': (\d\.\d+)\.\.\.", code):  # a printed accuracy the comment states
        assert f"'accuracy': {claimed}" in printed, f"the README says accuracy {claimed}..., the code printed {printed}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")  # the README's own commands make every file they read


def _long(command):
    """A README training run of 20 epochs or more on real data, or a benchmark report: the full suite runs it, the
    quick tier does not."""
    argv = shlex.split(command)
    if argv[:3] == ["python", "-m", "benchmarks.report"] or argv[:2] == ["nnkit", "bench"]:
        return True  # its convolution and epoch reports run for real (only the step report is stubbed)
    if argv[:2] != ["nnkit", "train"] or "--help" in argv:
        return False
    epochs = int(argv[argv.index("--epochs") + 1]) if "--epochs" in argv else 60  # train's default
    data = argv[argv.index("--data") + 1] if "--data" in argv else "digits"
    return epochs >= 20 and data == "digits"


@pytest.mark.parametrize("command", [pytest.param(c, marks=pytest.mark.slow) if _long(c) else c for c in BASH],
                         ids=[f"bash{i}" for i in range(len(BASH))])
def test_readme_command(command, workdir, monkeypatch, capsys):
    argv = shlex.split(command)
    monkeypatch.chdir(workdir)
    if argv[:2] == ["pip", "install"]:
        assert argv[2] == "-e" and argv[3] in (".", ".[test]", ".[test,torch]", ".[plot]", ".[sklearn]")
    elif argv[0] == "pytest":
        assert all(a.startswith("-") or a in ("benchmarks", "tests") for a in argv[1:])
    elif argv[:3] == ["python", "-m", "benchmarks.report"] or argv[:2] == ["nnkit", "bench"]:
        import argparse
        from nnkit.tools import bench

        opts = argv[3:] if argv[0] == "python" else argv[2:]
        calls = []
        empty = {"targets": [], "steps": [], "kernels": [], "sweep": [], "unavailable": {}}
        monkeypatch.setattr(bench, "run_report", lambda **kw: calls.append(kw) or empty)
        monkeypatch.setattr(bench, "run_conv_report", lambda *a, **kw: {})  # tests/test_cli.py times them for real
        monkeypatch.setattr(bench, "run_epoch_report", lambda *a, **kw: [])
        monkeypatch.setattr(bench, "write_markdown", lambda *a, **kw: None)
        monkeypatch.setattr(argparse.ArgumentParser, "exit", lambda self, status=0, message=None: pytest.fail(message))
        assert bench.main(opts) == 0 and len(calls) == 1  # the options parse; the minutes-long timing is stubbed
    elif argv[:3] == ["python", "-m", "benchmarks.bench_digits"]:
        import benchmarks.bench_digits as bd

        assert callable(bd.main)
    elif argv[0] == "nnkit":
        if "--help" in argv:
            with pytest.raises(SystemExit) as exc:
                main(argv[1:])
            assert exc.value.code == 0
        else:
            assert main(argv[1:]) == 0, capsys.readouterr().err
    else:
        pytest.fail(f"README command {command!r} is not covered by this test")
