"""A feature whose extra is not installed stops with one line naming the extra (CLI: exit code 2)."""

import sys

import numpy as np
import pytest

from contextforcing.cli import main
from contextforcing.errors import UserError
from contextforcing.runtime import extras
from contextforcing.runtime.extras import EXTRAS, require


@pytest.mark.parametrize("extra, module", [(e, m) for e, modules in EXTRAS.items() for m in modules])
def test_require_names_the_extra(monkeypatch, extra, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(UserError, match=rf"needs the \[{extra}\] extra: pip install -e '.\[{extra}\]' in "):
        require(module, extra, "a feature")


def test_the_hint_installs_from_the_clone_or_by_name(monkeypatch, tmp_path):
    """From a clone, `pip install 'contextforcing[serve]'` would fetch a release (or fail): the hint installs the
    clone's extra; an installed package (no pyproject.toml beside it) is named."""
    assert extras.install_hint("serve") == f"pip install -e '.[serve]' in {extras.SOURCE_TREE}"
    assert (extras.SOURCE_TREE / "pyproject.toml").is_file()
    monkeypatch.setattr(extras, "SOURCE_TREE", tmp_path)
    assert extras.install_hint("serve") == "pip install 'contextforcing[serve]'"


def test_serve_without_its_extra_is_one_line_with_the_clones_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[serve] extra (uvicorn is missing): pip install -e '.[serve]' in " in err


def test_eval_report_without_matplotlib_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    frames = (np.random.default_rng(0).random((20, 32, 32, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "v.npy", frames)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["eval", str(tmp_path / "v.npy"), "--report", str(tmp_path / "report"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[eval] extra" in err
    assert not (tmp_path / "report").exists()
