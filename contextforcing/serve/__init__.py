"""`contextforcing serve`: a live stream in the browser, with the memory made visible.

One Starlette app (`app.py`) serves a single static page (`static/index.html`) and one WebSocket per tab.
Each tab's stream is a `Generation` of the Python API (`Pipeline.stream`), driven chunk by chunk in a worker
thread by a `StreamSession` (`session.py`); what the memory panel shows of each chunk is built from the
chunk's `ChunkPlan` and `MemoryUpdate` by `memory_view.py`. Nothing here generates on its own.

The web libraries are the optional `[serve]` extra; importing this package needs none of them.
"""
