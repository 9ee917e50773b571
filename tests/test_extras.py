"""A feature whose extra is not installed stops with one line naming the extra (CLI: exit code 2)."""

import sys

import numpy as np
import pytest

from contextforcing.cli import main
from contextforcing.errors import UserError
from contextforcing.extras import EXTRAS, require


@pytest.mark.parametrize("extra, module", [(e, m) for e, modules in EXTRAS.items() for m in modules])
def test_require_names_the_extra(monkeypatch, extra, module):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(UserError, match=rf"needs the \[{extra}\] extra: pip install 'contextforcing\[{extra}\]'"):
        require(module, extra, "a feature")


def test_eval_report_without_matplotlib_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    frames = (np.random.default_rng(0).random((20, 32, 32, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "v.npy", frames)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["eval", str(tmp_path / "v.npy"), "--report", str(tmp_path / "report"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "[eval] extra" in err
    assert not (tmp_path / "report").exists()
