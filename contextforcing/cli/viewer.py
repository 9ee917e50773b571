"""`contextforcing serve`: the live viewer's command (flags checked, port bound and model loaded before the
server starts, so each failure is one line and exit code 2)."""

from __future__ import annotations

import argparse
import socket

from contextforcing.cli.args import add_weight_args, examples, load_pipeline, model_source
from contextforcing.errors import UserError, first_line, note


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="a live, interactive stream in the browser, with the memory made visible",
        description="Serve a page that streams the model live: type a prompt, Start, switch prompts with Enter, and "
        "watch which frames each chunk attends (sink / slow / fast). With no weight flags: the "
        "embedded world model.",
        epilog=examples(
            "contextforcing serve",
            "contextforcing serve --port 8000 --max-streams 1",
            "contextforcing serve --wan-dir Wan2.1-T2V-1.3B --checkpoint model.pt --device cuda",
        ),
    )
    add_weight_args(p)
    _add_server_args(p)
    _add_stream_args(p)
    p.set_defaults(func=run)
    return p


def _add_server_args(p: argparse.ArgumentParser) -> None:
    """Where the server listens."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on (0: any free port; default 7860)")


def _add_stream_args(p: argparse.ArgumentParser) -> None:
    """The streams: how many, how long, how far ahead, who may open them, how their frames travel, how many are
    kept."""
    p.add_argument(
        "--max-streams",
        type=int,
        default=2,
        help="streams generating at once; a tab beyond them is told the server is busy (default 2)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="longest stream in video seconds; its frames are kept on disk for Download mp4 (default 600)",
    )
    p.add_argument(
        "--lead-chunks",
        type=int,
        default=2,
        help="chunks generated ahead of what the page has played (default 2): fewer = a prompt switch "
        "shows sooner, more = fewer stalls when a chunk is slow",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name or address, e.g. the machine's name when --host 0.0.0.0 "
        "serves other machines (default: localhost names and the --host address; * for any); repeatable",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="also open streams for pages from this origin, e.g. http://lab-proxy:8080 (default: only the "
        "viewer's own page; * for any); repeatable",
    )
    p.add_argument(
        "--frames",
        choices=("jpeg", "webp", "png"),
        default="jpeg",
        help="how frames travel to the page: jpeg (default, ~2.9 KB per 64x64 frame at quality 90), webp "
        "(smaller), png (exact pixels, ~7 KB); raw frames needed ~200 KB/s for the toy model",
    )
    p.add_argument("--quality", type=int, default=90, help="jpeg/webp quality, 1..100 (default 90)")
    p.add_argument(
        "--keep-downloads",
        type=int,
        default=4,
        help="closed tabs' streams (and uploaded replays) kept for download while the server runs (default 4)",
    )


def run(args) -> int:
    from contextforcing.serve.frames import FrameCodec
    from contextforcing.serve.messages import ServeLimits

    limits = ServeLimits(args.max_streams, args.max_seconds, args.lead_chunks).check()
    codec = FrameCodec(args.frames, args.quality).check()
    if args.keep_downloads < 0:
        raise UserError(f"--keep-downloads must be >= 0, got {args.keep_downloads}")
    uvicorn = require_extra()
    from contextforcing.serve.access import WILDCARD_ADDRESSES, AccessRules

    access = AccessRules.for_address(args.host, args.allow_host, args.allow_origin)
    source = model_source(args)
    sock = bind(args.host, args.port)
    try:
        pipe = load_pipeline(source, args.device, args.dtype, args.threads)
        from contextforcing.serve.app import build_app

        app = build_app(pipe, limits, codec, args.keep_downloads, access)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"contextforcing: serving {pipe.weights} at http://{shown}:{port}/ (Ctrl-C stops)", flush=True)
        if args.host in WILDCARD_ADDRESSES and not args.allow_host:
            note(
                f"--host {args.host} listens on every interface but answers only {', '.join(access.hosts)}: add "
                "--allow-host NAME for the name or address other machines use"
            )
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def require_extra():
    """The web libraries of the `[serve]` extra, or a one-line error naming it."""
    from contextforcing.runtime.extras import install_hint

    try:
        import starlette  # noqa: F401
        import uvicorn
        import websockets  # noqa: F401  (uvicorn's WebSocket protocol)
    except ImportError as err:
        raise UserError(
            f"serve needs the [serve] extra ({err.name or first_line(err)} is missing): {install_hint('serve')}"
        ) from None
    return uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line error (bad address, port taken, no permission)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"--host {host!r} is not an address this machine can listen on ({first_line(err)})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or first_line(err)}") from None
    sock.set_inheritable(True)
    return sock
