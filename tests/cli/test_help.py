"""What a new user meets first: every command's help describes it and has examples (each of which parses as
written), `--version`, and a mistyped command line is one line (with a guess), not the whole usage block."""

import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import contextforcing
from contextforcing.cli import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def leaf_parsers(parser: argparse.ArgumentParser, path=()):
    """(command words, parser) of every command that runs something (`world render`, not `world`)."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield path, parser
        return
    for name, child in actions[0].choices.items():
        yield from leaf_parsers(child, (*path, name))


def example_lines(parser: argparse.ArgumentParser) -> list[str]:
    epilog = parser.epilog or ""
    assert epilog.startswith("examples:"), f"{parser.prog}: no examples in its help"
    return [line.strip() for line in epilog.splitlines()[1:] if line.strip()]


def test_every_command_has_a_description_and_examples_that_parse():
    root = build_parser()
    commands = list(leaf_parsers(root))
    assert len(commands) >= 12  # generate, bench, convert, world x4, eval, train, export, serve, plot
    checked = 0
    for words, parser in commands:
        assert parser.description, f"{' '.join(words)}: no description"
        assert "register(" not in (parser.description or ""), f"{' '.join(words)}: an internal docstring as help"
        examples = example_lines(parser)
        assert examples, f"{' '.join(words)}: no examples"
        for line in examples:
            argv = shlex.split(line)
            if argv[0] != "contextforcing":  # torchrun ... -m contextforcing.cli: the same words after `cli`
                argv = argv[argv.index("contextforcing.cli") :]
            args = root.parse_args(argv[1:])  # SystemExit here: an example that does not parse
            assert callable(args.func)
            checked += 1
    assert checked >= 30


def test_version_is_the_packages():
    version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    assert contextforcing.__version__ == version == "0.2.0"
    result = subprocess.run(
        [sys.executable, "-m", "contextforcing.cli", "--version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == f"contextforcing {version}"
    assert f"\n## {version}\n" in (REPO / "CHANGELOG.md").read_text()  # the release has its changelog section


def test_the_license_names_its_copyright_holder():
    text = (REPO / "LICENSE").read_text()
    assert "[yyyy]" not in text and "[name of copyright owner]" not in text
    assert "Copyright 2026 The contextforcing authors" in text


def test_make_demo_installs_what_it_and_the_next_step_need(tmp_path):
    """`make demo` writes an evaluation report ([eval]) and the README's next step is `contextforcing serve`
    ([serve]): a dry run lists both installs before the demo script."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        ["make", "-n", "-B", "demo", f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    demo = next(i for i, line in enumerate(lines) if "scripts/demo.py" in line)
    installs = " ".join(lines[:demo])
    assert '-e ".[eval]"' in installs and '-e ".[serve]"' in installs


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["generate", "--seconds", "2"], "contextforcing generate: error: the following arguments are required: --out"),
        (["generat"], "invalid choice: 'generat'"),
        (["world", "render", "--heldout", "x", "--out", "o"], "argument --heldout: invalid int value: 'x'"),
        (["bench", "--seconds", "1", "--recache", "x"], "unrecognized arguments: --recache x"),
    ],
)
def test_usage_errors_are_one_line_with_where_help_is(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert expected in err and "--help)" in err and "usage:" not in err


def test_a_mistyped_command_gets_a_guess(capsys):
    with pytest.raises(SystemExit):
        main(["genrate", "--seconds", "1"])
    assert "did you mean 'generate'?" in capsys.readouterr().err


def test_train_without_its_extra_is_one_line_and_leaves_no_run_directory(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now fails
    run = tmp_path / "run"
    code = main(["train", "dmd", "--config", str(REPO / "configs/toy/dmd.yaml"), f"trainer.run_dir={run}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "[train] extra" in err
    assert not run.exists()
