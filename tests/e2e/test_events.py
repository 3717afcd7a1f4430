"""GET /api/events (SPEC 8, issue 4 item 6): per-organization Server-Sent
Events of recording status changes, read incrementally from a raw socket:
a tus upload yields `recording.status` "uploaded", a DELETE yields
`recording.deleted`, the recording filter, Last-Event-ID resumption
(header and query, paged replay, then live, no gap or duplicate), a fresh
stream starting at the present, organization isolation, the heartbeat
(REELD_SSE_HEARTBEAT_S=1 here), 401 and 422."""
import json
import os
import socket
import time

import sseutil
from harness import Reeld, assert_error, done, eq, psql, run_all
from tusutil import Org, metadata, public_env, tus_create

r = Reeld(env={"REELD_SSE_HEARTBEAT_S": "1"})
public_env(r)
r.start()
A = Org(r, "eva")
B = Org(r, "evb")


class Stream(sseutil.Stream):
    """An SSE connection to this file's reeld."""

    def __init__(self, token=None, query="", headers=None):
        super().__init__(r, token, query, headers)


def _max_id(org=None):
    where = f" WHERE org_id = '{org}'" if org else ""
    return int(psql(f"SELECT coalesce(max(id), 0) FROM events{where}", db=r.db))


def _ids_after(org, after):
    out = psql(f"SELECT id FROM events WHERE org_id = '{org}' AND id > {after} ORDER BY id",
               db=r.db)
    return [int(x) for x in out.split()] if out else []


def _new_recording(org):
    st, js, _, raw = r.post("/api/recordings", {"title": "ev"}, token=org.owner)
    eq(st, 201, f"POST /api/recordings {raw[:200]!r}")
    return js["recording"]["id"]


def _upload(org):
    """A complete tus upload (creation-with-upload); returns its recording id."""
    data = os.urandom(2048)
    st, path, _, raw = tus_create(r, org.owner, length=len(data), body=data,
                                  meta=metadata(filename="clip.webm", filetype="video/webm"))
    eq(st, 201, f"tus create {raw[:200]!r}")
    return path.rstrip("/").rsplit("/", 1)[1]


def _delete(org, rid):
    st, _, _, raw = r.request("DELETE", f"/api/recordings/{rid}", token=org.owner)
    eq(st, 204, f"DELETE {raw[:200]!r}")


def _open(org, query="", headers=None):
    s = Stream(org.owner, query, headers)
    eq(s.status, 200, "stream status")
    eq(s.headers.get("content-type", "").split(";")[0], "text/event-stream", "content type")
    return s


def missing_token_is_401():
    s = Stream(None)
    eq(s.status, 401, "status")
    assert_error(401, json.loads(s.body()), 401, "unauthenticated")
    s.close()


def bad_filter_or_event_id_is_422():
    for q, h in (("?recording_id=nope", None), ("", {"Last-Event-ID": "x1"}),
                 ("?last_event_id=-3", None)):
        s = Stream(A.owner, q, h)
        eq(s.status, 422, f"status for {q} {h}")
        assert_error(422, json.loads(s.body()), 422, "invalid_request")
        s.close()


def upload_emits_uploaded_status_event():
    s = _open(A, headers={"Last-Event-ID": str(_max_id())})
    rid = _upload(A)
    e = s.event(lambda e: e["data"].get("recording_id") == rid
                and e["data"].get("status") == "uploaded")
    eq(e["event"], "recording.status", "event type")
    assert e["id"].isdigit(), f"id {e['id']!r}"
    for k in ("stage", "error"):
        assert k in e["data"], f"data lacks {k}: {e['data']!r}"
    s.close()


def delete_emits_deleted_event():
    rid = _new_recording(A)
    s = _open(A, headers={"Last-Event-ID": str(_max_id())})
    _delete(A, rid)
    e = s.event(lambda e: e["event"] == "recording.deleted")
    eq(e["data"]["recording_id"], rid, "recording_id")
    s.close()


def recording_filter_excludes_other_recordings():
    keep = _new_recording(A)
    s = _open(A, f"?recording_id={keep}", {"Last-Event-ID": str(_max_id())})
    _upload(A)  # another recording's events
    _delete(A, keep)
    e = s.event(timeout=15)
    eq(e["event"], "recording.deleted", "first event is the filtered recording's")
    eq(e["data"]["recording_id"], keep, "recording_id")
    s.close()


def fresh_stream_starts_at_the_present():
    _upload(A)  # history that a fresh stream must not replay
    s = _open(A)
    first = s.next()
    eq(first, {"comment": "ok"}, "opening comment")
    time.sleep(0.5)  # let the stream find the present before the next event
    rid = _new_recording(A)
    _delete(A, rid)
    e = s.event(lambda e: e["event"] == "recording.deleted")
    eq(e["data"]["recording_id"], rid, "the live event")
    for x in s.skipped:
        assert int(x["id"]) > 0 and x["data"].get("recording_id") != rid
        if x["event"] == "recording.status" and x["data"]["status"] == "uploaded":
            raise AssertionError(f"history replayed: {x!r}")
    s.close()


def resume_replays_missed_events_then_live():
    m0 = _max_id()
    for _ in range(2):
        _delete(A, _new_recording(A))
    # more than one replay page, for a recording of its own
    psql("INSERT INTO events (org_id, recording_id, type, data) SELECT"
         f" '{A.id}', gen_random_uuid(), 'recording.status',"
         " jsonb_build_object('status', 'uploaded', 'n', g) FROM generate_series(1, 1200) g",
         db=r.db)
    expect = _ids_after(A.id, m0)
    for query, headers in (("", {"Last-Event-ID": str(m0)}), (f"?last_event_id={m0}", None)):
        s = _open(A, query, headers)
        got = [int(s.event(timeout=20)["id"]) for _ in expect]
        eq(got, expect, f"replayed ids ({query or 'header'})")
        live = _new_recording(A)
        _delete(A, live)
        e = s.event(lambda e: e["event"] == "recording.deleted")
        eq(e["data"]["recording_id"], live, "live event after the replay")
        after = [int(x["id"]) for x in s.skipped] + [int(e["id"])]
        eq(got + after, _ids_after(A.id, m0)[:len(got) + len(after)], "no gap, no duplicate")
        expect = _ids_after(A.id, m0)
        s.close()


def other_organizations_events_are_not_seen():
    sb = _open(B, headers={"Last-Event-ID": str(_max_id())})
    mine = _new_recording(B)
    _upload(A)
    _delete(A, _new_recording(A))
    _delete(B, mine)
    e = sb.event(lambda e: e["event"] == "recording.deleted")
    eq(e["data"]["recording_id"], mine, "B's own event")
    for x in sb.skipped:
        raise AssertionError(f"B saw another event: {x!r}")
    sb.close()


def heartbeat_comment_arrives():
    s = _open(A)
    deadline = time.time() + 10
    while time.time() < deadline:
        e = s.next(timeout=5)
        if e == {"comment": "heartbeat"}:
            s.close()
            return
    raise AssertionError("no heartbeat")


def slow_reader_is_dropped_and_others_go_on():
    slow = _open(A, headers={"Last-Event-ID": "0"})  # never reads: the replay overflows
    slow.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    psql("INSERT INTO events (org_id, recording_id, type, data) SELECT"
         f" '{A.id}', gen_random_uuid(), 'recording.status',"
         " jsonb_build_object('status', 'uploaded', 'pad', repeat('x', 2000))"
         " FROM generate_series(1, 400)", db=r.db)
    s = _open(A, headers={"Last-Event-ID": str(_max_id())})
    rid = _new_recording(A)
    _delete(A, rid)
    e = s.event(lambda e: e["event"] == "recording.deleted")
    eq(e["data"]["recording_id"], rid, "event reaches the reader that reads")
    s.close()
    # the slow one was cut off: draining it reaches the end of the connection
    slow.s.settimeout(10)
    n = 0
    while True:
        b = slow.s.recv(65536)
        if not b:
            break
        n += len(b)
        if n > 64 * 1024 * 1024:
            raise AssertionError("slow reader was never dropped")
    slow.close()


def closed_streams_leave_the_others_working():
    streams = [_open(A, f"?recording_id={_new_recording(A)}") for _ in range(5)]
    for x in streams:
        x.close()
    time.sleep(1.5)  # a heartbeat tick writes to the closed ones
    s = _open(A, headers={"Last-Event-ID": str(_max_id())})
    rid = _new_recording(A)
    _delete(A, rid)
    eq(s.event(lambda e: e["event"] == "recording.deleted")["data"]["recording_id"], rid,
       "live event after other streams closed")
    s.close()


def shutdown_ends_open_streams():
    s = _open(A)
    eq(r.stop(), 0, "exit status with a stream open")
    while s.next(timeout=10) is not None:
        pass
    assert s.ended, "the stream did not end with its last chunk"
    s.close()


run_all(globals())
r.stop()
done()
