"""The web app: the page, its info, one WebSocket per tab, and the downloads of each tab's stream so far.

GET  /                        the page (static/index.html: plain JS, canvas and SVG, no build step)
GET  /api/info                the model, frame rate, example prompt, memory policies and their options
GET  /api/status              streams running, tabs open, the maximum
WS   /ws                      a tab's stream (protocol: `session.py`)
POST /api/replay              upload a saved video and its sidecar to replay (`replay.py`); answers its id
GET  /download/{id}.mp4       the stream so far, written by the CLI's paired atomic writer, named for what it is
GET  /download/{id}.json      its sidecar, under the same name; both still served after the tab closed
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from contextforcing.errors import UserError
from contextforcing.pipeline import Pipeline
from contextforcing.serve.access import AccessCheck, AccessRules
from contextforcing.serve.downloads import KeptStream
from contextforcing.serve.frames import FrameCodec
from contextforcing.serve.messages import ServeLimits
from contextforcing.serve.replay import read_upload
from contextforcing.serve.session import StreamHub, page_info

PAGE = Path(__file__).resolve().parent / "static" / "index.html"


def build_app(
    pipe: Pipeline,
    limits: ServeLimits = ServeLimits(),
    codec: FrameCodec = FrameCodec(),
    keep_downloads: int = 4,
    access: AccessRules = AccessRules(),
) -> Starlette:
    """The viewer's app; `access`: the Host names and page Origins it answers (`access.py`; default: localhost)."""
    hub = StreamHub(pipe, limits, codec, keep_downloads)
    info = page_info(pipe, hub.limits)

    async def page(request: Request):
        return FileResponse(PAGE, media_type="text/html")

    async def api_info(request: Request):
        return JSONResponse(info)

    async def api_status(request: Request):
        return JSONResponse(hub.status())

    async def stream_socket(websocket: WebSocket):
        await _stream_socket(hub, websocket)

    async def download(request: Request):
        return await _download(hub, request)

    async def upload_replay(request: Request):
        return await _upload_replay(hub, request)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        hub.shutdown()

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/api/info", api_info),
            Route("/api/status", api_status),
            WebSocketRoute("/ws", stream_socket),
            Route("/api/replay", upload_replay, methods=["POST"]),
            Route("/download/{session}.{kind:str}", download),
        ],
        lifespan=lifespan,
        middleware=[Middleware(AccessCheck, rules=access)],
    )
    app.state.hub = hub
    return app


async def _stream_socket(hub: StreamHub, websocket: WebSocket) -> None:
    """One tab's WebSocket: its session's messages in, until the tab goes away."""
    await websocket.accept()
    session = hub.open(websocket.send_json, websocket.send_bytes)
    await session.send({"type": "hello", "session": session.id})
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") is not None:
                await session.receive(message["text"])
    except WebSocketDisconnect:
        pass
    finally:
        hub.close(session)


class _KeptDownload:
    """A closed tab's kept stream, answering as a live session's download does."""

    def __init__(self, kept: KeptStream):
        self.kept, self.stem = kept, kept.stem

    def snapshot(self):
        return self.kept.frames(), self.kept.record

    def write_mp4(self, directory: Path) -> Path:
        from contextforcing.io.video import save_video

        return save_video(directory / f"{self.stem}.mp4", self.kept.frames(), self.kept.record["fps"], self.kept.record)


def _download_source(hub, session_id: str):
    """The live tab's session, or the kept stream of a closed one (None: neither)."""
    session = hub.sessions.get(session_id)
    if session is not None and session.spool is not None:
        return session
    kept = hub.downloads.get(session_id)
    return None if kept is None else _KeptDownload(kept)


def _attachment(filename: str) -> dict:
    return {"content-disposition": f'attachment; filename="{filename}"'}


async def _download(hub: StreamHub, request: Request):
    """/download/{id}.mp4 or .json: a live tab's stream so far, or a closed tab's kept stream, named."""
    kind = request.path_params["kind"]
    if kind not in ("mp4", "json"):
        return PlainTextResponse("downloads are .mp4 or .json", status_code=404)
    source = _download_source(hub, request.path_params["session"])
    if source is None:
        return PlainTextResponse(
            "no such stream on this server: the server restarted, or newer closed streams replaced it "
            "(--keep-downloads)",
            404,
        )
    try:
        if kind == "json":
            frames_record = await run_in_threadpool(source.snapshot)
            return JSONResponse(frames_record[1], headers=_attachment(f"{source.stem}.json"))
        directory = Path(tempfile.mkdtemp(prefix="contextforcing-download-"))
        path = await run_in_threadpool(source.write_mp4, directory)
    except UserError as err:
        return PlainTextResponse(str(err), status_code=409)
    return FileResponse(
        path,
        media_type="video/mp4",
        filename=path.name,
        background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True),
    )


async def _upload_replay(hub: StreamHub, request: Request):
    """POST /api/replay: a saved mp4 and its sidecar (`replay.read_upload`); answers the replay's id."""
    body = await request.body()
    try:
        replay = await run_in_threadpool(read_upload, body)
    except UserError as err:
        return JSONResponse({"error": str(err)}, status_code=400)
    hub.replays.add(replay)
    return JSONResponse({"replay": replay.id, "name": replay.name, "chunks": len(replay.saved.chunks)})
