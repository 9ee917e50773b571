"""`contextforcing convert`: any supported Wan2.1 DiT checkpoint -> one safetensors file (original or diffusers names).

`cli.main` calls `register(subparsers)`; the handler returns an exit code and raises `UserError` for bad input
(the CLI turns it into a one-line message and exit code 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from contextforcing.cli.args import add_lora_alpha_arg, add_weight_choice_args, examples
from contextforcing.config import PRESETS, get_preset
from contextforcing.errors import UserError
from contextforcing.io.outputs import check_creatable
from contextforcing.model.architecture import describe_config, infer_model_config
from contextforcing.model.checkpoints import (
    FORMATS,
    SAVE_LAYOUTS,
    check_complete,
    check_heads_agree,
    checkpoint_config,
    read_checkpoint,
    save_safetensors,
)

DTYPES = {"keep": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_DESCRIPTION = """\
Read a Wan2.1 DiT checkpoint (original Wan2.1 safetensors/.pth, diffusers WanTransformer3DModel directory,
or a Self-Forcing/CausVid/LongLive/Context Forcing training .pt), optionally merge a LoRA adapter, and write
it as one safetensors file. OUT ending in .safetensors is written as that file; any other OUT becomes a
model directory with diffusion_pytorch_model.safetensors and a config.json (diffusers' config with
--to diffusers, so WanTransformer3DModel.from_pretrained(OUT) works; Wan's own otherwise)."""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help="convert a Wan2.1 / distilled checkpoint to a single safetensors file",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples(
            "contextforcing convert self_forcing_dmd.pt self_forcing.safetensors",
            "contextforcing convert model.pt context_forcing_diffusers --to diffusers",
            "contextforcing convert longlive_base.pt longlive.safetensors --lora lora.pt",
        ),
    )
    add = parser.add_argument
    add("input", metavar="IN", type=Path, help="checkpoint file or directory")
    add("output", metavar="OUT", type=Path, help="OUT.safetensors, or a directory")
    add("--to", choices=SAVE_LAYOUTS, default="original", help="parameter names to write (default: original)")
    add("--checkpoint-format", choices=FORMATS, default=None, help="input format (default: detected)")
    add_weight_choice_args(parser)
    add(
        "--lora",
        type=Path,
        default=None,
        help="LoRA to merge in: peft file or directory, LongLive lora.pt or checkpoint_model_* directory",
    )
    add_lora_alpha_arg(parser)
    add("--preset", choices=sorted(PRESETS), default=None, help="check the weights against this preset")
    add(
        "--num-heads",
        type=int,
        default=None,
        help="attention heads, for the config.json of a directory OUT (default: --preset, the input's "
        "config.json, or a Wan2.1 width; anything else is refused)",
    )
    add("--dtype", choices=list(DTYPES), default="keep", help="cast floating-point weights (default: keep)")
    add("--allow-pickle", action="store_true", help="unpickle arbitrary objects in .pt files (trusted files only)")
    parser.set_defaults(func=run_convert)
    return parser


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return state
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def run_convert(args: argparse.Namespace) -> int:
    if args.lora_alpha is not None and args.lora is None:
        raise UserError("--lora-alpha needs --lora")
    check_creatable(args.output, directory=args.output.suffix != ".safetensors", what="OUT")
    loaded = read_checkpoint(
        args.input,
        args.checkpoint_format,
        use_ema=args.use_ema,
        lora=args.lora,
        lora_alpha=args.lora_alpha,
        allow_pickle=args.allow_pickle,
    )
    state = loaded.state
    print(loaded.choice.describe())
    base = get_preset(args.preset).model if args.preset else checkpoint_config(args.input)
    # Refuse partial or foreign weights before writing anything (against the preset when one is named).
    shapes = check_complete(state, base if args.preset else None)
    config = None
    if args.output.suffix != ".safetensors":  # a directory: its config.json needs the full config
        if args.preset and args.num_heads is None:
            check_heads_agree(args.input, base)
        # Heads from --num-heads, the named preset, the input's config.json or a Wan2.1 width; never a guess.
        config = infer_model_config(state, num_heads=args.num_heads, base=base)
    written = save_safetensors(_cast(state, DTYPES[args.dtype]), args.output, args.to, config=config)
    print(f"wrote {written}: {len(state)} tensors, {describe_config(shapes)}, {args.to} names")
    return 0
