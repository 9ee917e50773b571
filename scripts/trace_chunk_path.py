"""How long is the path a chunk takes? A runtime trace (`sys.setprofile`) of the embedded model.

Two paths are traced, each counting the package's own Python functions (contextforcing/*.py; module bodies,
comprehensions, lambdas and generator expressions are not functions here, but their calls are counted):

- **CLI**: `contextforcing generate --prompt ... --seconds S --out FILE.mp4 --device cpu --threads 1` through
  `cli.main`, up to the mp4 and its sidecar on disk. Loading is left out: whatever runs under `load_embedded` (the
  weights, the codec) and under an import (module bodies) is not counted. The pipeline is loaded once before the
  traced run, so that the traced run does not pay for the first imports either.
- **one chunk**: what runs inside each `Generation.__next__` of that same run (union of files and functions over
  its chunks; calls averaged over them).

Prints a table (files, functions, Python calls; per chunk the mean over the run's chunks) and, with `--list`,
every function on each path with its call count. Numbers are of the code, not its speed: with the device and the
thread count pinned they do not depend on the machine, its load or its environment (tests hold them at ceilings,
tests/scripts/test_trace_chunk_path.py).

    OMP_NUM_THREADS=1 python scripts/trace_chunk_path.py            # 3 s of the embedded model
    OMP_NUM_THREADS=1 python scripts/trace_chunk_path.py --list     # and the functions
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import contextforcing

PACKAGE = Path(contextforcing.__file__).resolve().parent
PROMPT = "warm room, hold, lights on, black ball"
# Everything under these functions is loading (weights, codec), which the trace leaves out.
LOADERS = {"load_embedded"}
# Code objects that are no functions of their own (their calls still count).
NOT_FUNCTIONS = {"<module>", "<genexpr>", "<listcomp>", "<dictcomp>", "<setcomp>", "<lambda>"}
# The chunk loop's step: one call of it is one chunk.
CHUNK_STEP = "Generation.__next__"


@dataclass
class Path_:
    """What one traced path visited: calls per function (file, qualified name)."""

    calls: Counter = field(default_factory=Counter)

    def add(self, key: tuple[str, str]) -> None:
        self.calls[key] += 1

    @property
    def files(self) -> set[str]:
        return {f for f, _ in self.calls}

    @property
    def functions(self) -> set[tuple[str, str]]:
        return {(f, n) for f, n in self.calls if n.rsplit(".", 1)[-1] not in NOT_FUNCTIONS}

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


class Tracer:
    """A `sys.setprofile` hook that counts the package's Python calls, skipping loading and imports, and keeps
    the calls made inside each chunk step apart."""

    def __init__(self):
        self.path = Path_()
        self.chunks: list[Path_] = []
        self.skip_depth = 0  # > 0 while inside a loader or an import
        self.chunk_depth = 0  # > 0 while inside a chunk step

    def __call__(self, frame, event, arg) -> None:
        if event not in ("call", "return"):
            return
        code = frame.f_code
        name = getattr(code, "co_qualname", code.co_name)
        skipping = code.co_name in LOADERS or code.co_name == "<module>"
        in_package = code.co_filename.startswith(str(PACKAGE))
        if event == "return":
            self.skip_depth -= skipping
            if in_package and name == CHUNK_STEP and not self.skip_depth:
                self._end_chunk(produced=arg is not None)
            return
        if skipping:
            self.skip_depth += 1
        if self.skip_depth or not in_package:
            return
        key = (str(Path(code.co_filename).relative_to(PACKAGE.parent)), name)
        self.path.add(key)
        if name == CHUNK_STEP:
            if not self.chunk_depth:
                self.chunks.append(Path_())
            self.chunk_depth += 1
        if self.chunk_depth:
            self.chunks[-1].add(key)

    def _end_chunk(self, produced: bool) -> None:
        """The chunk step returned: a chunk, or nothing (the end of the generation, which is no chunk)."""
        self.chunk_depth -= 1
        if not self.chunk_depth and not produced:
            self.chunks.pop()


def trace_generate(seconds: float, out: Path) -> Tracer:
    """`contextforcing generate` of the embedded model under the tracer (after one untraced load)."""
    from contextforcing import cli

    def argv(path: Path) -> list[str]:
        # --device and --threads pinned: the device and thread rules (parts.py, runtime/threads.py) then take one
        # branch whatever the machine and its environment, so that the counts are the code's alone
        pinned = ["--device", "cpu", "--threads", "1", "--quiet"]
        return ["generate", "--prompt", PROMPT, "--seconds", f"{seconds:g}", "--out", str(path), *pinned]

    with contextlib.redirect_stdout(io.StringIO()):  # its "wrote ..." lines
        assert cli.main(argv(out.with_name("warm.mp4"))) == 0  # the first imports and caches, untraced
        tracer = Tracer()
        sys.setprofile(tracer)
        try:
            code = cli.main(argv(out))
        finally:
            sys.setprofile(None)
    assert code == 0 and out.is_file() and out.with_suffix(".json").is_file(), "the traced run wrote no video"
    return tracer


def union(paths: list[Path_]) -> Path_:
    merged = Path_()
    for p in paths:
        merged.calls.update(p.calls)
    return merged


def table(tracer: Tracer) -> str:
    chunk = union(tracer.chunks)
    rows = [
        ("CLI prompt -> mp4 + sidecar", tracer.path, f"{tracer.path.total_calls}"),
        (f"one chunk ({len(tracer.chunks)} chunks)", chunk, f"{chunk.total_calls / len(tracer.chunks):.0f}"),
    ]
    lines = [f"{'path':<32} {'files':>6} {'functions':>10} {'calls':>8}"]
    for label, path, calls in rows:
        lines.append(f"{label:<32} {len(path.files):>6} {len(path.functions):>10} {calls:>8}")
    return "\n".join(lines) + "\n(calls of one chunk: the mean per chunk; files and functions: any chunk's)"


def listing(label: str, path: Path_) -> str:
    lines = [f"\n{label}:"]
    for file in sorted(path.files):
        functions = sorted((n, c) for (f, n), c in path.calls.items() if f == file)
        lines.append(f"  {file}")
        lines.extend(f"    {c:>6}  {n}" for n, c in functions)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="video length (default 3 s)")
    parser.add_argument("--list", action="store_true", help="every function on each path with its calls")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tracer = trace_generate(args.seconds, Path(tmp) / "traced.mp4")
    print(f"embedded model, {args.seconds:g} s of video, loading left out")
    print(table(tracer))
    if args.list:
        print(listing("CLI prompt -> mp4 + sidecar", tracer.path))
        print(listing("one chunk", union(tracer.chunks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
