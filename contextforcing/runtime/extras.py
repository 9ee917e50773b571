"""Optional dependencies, grouped as the package's extras (pyproject.toml), and the one-line error a feature
gives when its extra is not installed."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from contextforcing.errors import UserError

# extra -> (import name, what needs it) of each optional package
EXTRAS = {
    "wan": {"diffusers": "the Wan2.1 VAE", "transformers": "the UMT5 text encoder"},
    "eval": {
        "cv2": "the dynamic-degree flow proxy",
        "matplotlib": "evaluation plots",
        "transformers": "DINO / DINOv2 / CLIP features",
    },
    "train": {"tensorboard": "training logs"},
}


# The source tree the package runs from when it was installed from a clone (`pip install -e .`).
SOURCE_TREE = Path(__file__).resolve().parents[2]


def install_hint(extra: str) -> str:
    """How to install `extra` here: from the clone the package runs from (`pip install -e`: the name alone would
    fetch a release from the index), else by name."""
    if (SOURCE_TREE / "pyproject.toml").is_file():
        return f"pip install -e '.[{extra}]' in {SOURCE_TREE}"
    return f"pip install 'contextforcing[{extra}]'"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or stop with one line naming the extra that provides it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{feature} needs the [{extra}] extra: {install_hint(extra)} (missing: {module})") from None
