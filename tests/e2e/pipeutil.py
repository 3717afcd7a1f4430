"""Helpers the pipeline tests share (test_pipeline, test_pipeline_openai):
an upload through tus-js-client that returns the new recording's id, and
the recording.status values of one recording read from an SSE stream."""
import os
import time

from harness import psql
from tusutil import node


def upload_js(r, token, path, title, filetype="video/mp4"):
    """Uploads path with tus-js-client (256 KiB chunks); returns the id of
    the recording titled title."""
    res = node("upload.mjs", {"endpoint": f"http://127.0.0.1:{r.port}/api/uploads/",
                              "token": token, "file": path, "chunkSize": 256 * 1024,
                              "metadata": {"filename": os.path.basename(path),
                                           "filetype": filetype, "title": title}})
    if not res.get("ok"):
        raise AssertionError(f"upload failed: {res}")
    rid = psql(f"SELECT id FROM recordings WHERE title = '{title}'", db=r.db)
    if not rid:
        raise AssertionError("no recording for the upload")
    return rid


def statuses(stream, rid, until, timeout=120):
    """The recording.status values of rid on stream, up to and including
    the first one in until; returns them and that last event."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        e = stream.event(lambda e: e.get("event") == "recording.status"
                         and e["data"]["recording_id"] == rid,
                         timeout=deadline - time.time())
        seen.append(e["data"]["status"])
        if e["data"]["status"] in until:
            return seen, e
    raise AssertionError(f"statuses so far {seen}")
