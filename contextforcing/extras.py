"""Optional dependencies, grouped as the package's extras (pyproject.toml), and the one-line error a feature
gives when its extra is not installed."""

from __future__ import annotations

import importlib
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


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import `module`, or stop with one line naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{feature} needs the [{extra}] extra: pip install 'contextforcing[{extra}]' (missing: {module})"
        ) from None
