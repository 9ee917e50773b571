"""The web app: the page, its info, one WebSocket per tab, and the downloads of each tab's stream so far.

GET  /                        the page (static/index.html: plain JS, canvas and SVG, no build step)
GET  /api/info                the model, frame rate, example prompt, memory policies and their options
GET  /api/status              streams running, tabs open, the maximum
WS   /ws                      a tab's stream (protocol: `session.py`)
GET  /download/{id}.mp4       the stream so far, written by the CLI's paired atomic writer
GET  /download/{id}.json      its sidecar
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
from contextforcing.serve.session import ServeLimits, StreamHub, page_info

PAGE = Path(__file__).resolve().parent / "static" / "index.html"


def build_app(pipe: Pipeline, limits: ServeLimits = ServeLimits(), access: AccessRules = AccessRules()) -> Starlette:
    """The viewer's app; `access`: the Host names and page Origins it answers (`access.py`; default: localhost)."""
    hub = StreamHub(pipe, limits)
    info = page_info(pipe, hub.limits)

    async def page(request: Request):
        return FileResponse(PAGE, media_type="text/html")

    async def api_info(request: Request):
        return JSONResponse(info)

    async def api_status(request: Request):
        return JSONResponse(hub.status())

    async def stream_socket(websocket: WebSocket):
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

    async def download(request: Request):
        session = hub.sessions.get(request.path_params["session"])
        if request.path_params["kind"] not in ("mp4", "json"):
            return PlainTextResponse("downloads are .mp4 or .json", status_code=404)
        if session is None:
            return PlainTextResponse("no such stream: its tab is closed", status_code=404)
        if request.path_params["kind"] == "json":
            try:
                return JSONResponse(session.snapshot()[1])
            except UserError as err:
                return PlainTextResponse(str(err), status_code=409)
        directory = Path(tempfile.mkdtemp(prefix="contextforcing-download-"))
        try:
            path = await run_in_threadpool(session.write_mp4, directory)
        except UserError as err:
            shutil.rmtree(directory, ignore_errors=True)
            return PlainTextResponse(str(err), status_code=409)
        return FileResponse(
            path,
            media_type="video/mp4",
            filename=path.name,
            background=BackgroundTask(shutil.rmtree, directory, ignore_errors=True),
        )

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
            Route("/download/{session}.{kind:str}", download),
        ],
        lifespan=lifespan,
        middleware=[Middleware(AccessCheck, rules=access)],
    )
    app.state.hub = hub
    return app
