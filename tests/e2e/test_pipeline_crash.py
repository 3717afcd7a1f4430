"""The pipeline under crashes and with two processes (SPEC 8, issue 4),
with the local providers and short speech videos (tusutil.speech_video).

1. Crash safety: 20 recordings in flight while one reeld is killed with
   SIGKILL at random moments and restarted on the same data dir and
   database, repeatedly: every recording reaches `completed` with exactly
   one transcript, one document and one chunk set (idx 0..n-1), one job a
   stage, all done; its status events come in the pipeline's order, each
   once (a stage re-run after a crash finds its running status already
   set and writes no event again; a stage's result, status and event
   commit with its job's completion, which a re-run cannot repeat); and an
   SSE client that reconnects with Last-Event-ID after every restart has
   read exactly the organization's events table, in order: no gap, no
   duplicate. The kill times come from a seeded random generator (seed
   printed; REELD_CRASH_SEED sets it). What a killed process leaves running
   (its transcription children) is killed with it, as when the whole
   service unit crashes; their count is printed.

2. Two processes on one database (and one data dir, where the media
   lives): the jobs split between them and no (recording, stage) is done
   twice, by the jobs table and by both logs; then one is killed while it
   holds running jobs, and the other takes them over once their lease has
   expired and finishes every recording."""
import collections
import os
import random
import shutil
import sys
import tempfile
import time

import sseutil
from harness import Reeld, done, eq, psql, run_all
from tusutil import PIPELINE_ORDER, Org, metadata, recording_id_by_title, speech_video, tus_create

SENTENCE = "deploy the billing service."
N_CRASH = 20  # recordings in flight through the kills
KILLS = 5  # the issue asks for at least 5
N_SPLIT = 10  # recordings shared by two processes
N_TAKEOVER = 4  # recordings in flight when one of them dies
STAGES = ["document", "embedding", "publication", "transcription"]

_tmp = tempfile.mkdtemp(prefix="reeld-crash-")
_video = speech_video(_tmp, SENTENCE, "standup.mp4")
with open(_video, "rb") as _f:
    _VIDEO = _f.read()
_state = {}


def _upload(r, org, title):
    """One tus POST with the whole file (creation-with-upload)."""
    st, _, hd, raw = tus_create(r, org.owner, length=len(_VIDEO), body=_VIDEO,
                                meta=metadata(filename="standup.mp4", filetype="video/mp4",
                                              title=title))
    eq(st, 201, f"upload of {title} ({raw[:200]!r})")
    eq(hd.get("upload-offset"), str(len(_VIDEO)), f"Upload-Offset of {title}")
    return recording_id_by_title(r, title)


def _q(r, sql):
    """Rows of a query as lists of strings."""
    out = psql(sql, db=r.db)
    return [ln.split("|") for ln in out.splitlines()] if out else []


def _wait_completed(r, org_id, n, deadline):
    """Waits until the organization's n recordings are `completed`; fails at
    once when one ends `error`."""
    while time.time() < deadline:
        rows = _q(r, f"SELECT status, count(*) FROM recordings WHERE org_id = '{org_id}'"
                     " GROUP BY status")
        by = {s: int(c) for s, c in rows}
        if by.get("error"):
            err = _q(r, f"SELECT id, error_stage, error_message FROM recordings"
                        f" WHERE org_id = '{org_id}' AND status = 'error'")
            raise AssertionError(f"recordings ended error: {err}")
        if by.get("completed", 0) == n:
            return
        time.sleep(0.2)
    jobs = _q(r, f"SELECT stage, status, attempts, leased_by, last_error FROM jobs"
                 f" WHERE org_id = '{org_id}' AND status <> 'done'")
    raise AssertionError(f"not all completed in time: statuses {by}, unfinished jobs {jobs}")


def _procs():
    """(pid, state, ppid, pgrp) of every process."""
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out.append((int(p), st[0], int(st[1]), int(st[2])))
    return out


def _live_groups():
    """Process groups with a process that is not a zombie (a killed child
    whose new parent does not reap it still answers kill(pid, 0))."""
    return {g for _, state, _, g in _procs() if state != "Z"}


def _kill9(r):
    """SIGKILLs r's reeld. Its children (the transcription pipelines: bash,
    ffmpeg, reeld asr; thumbnails) run in process groups of their own
    under `reeld guard`, which kills its group when reeld dies: they must
    all be gone within 5 s (a loaded machine is slow to schedule them).
    Returns the number of groups still there then
    (killed here, so that one failure does not slow the rest)."""
    pid = r.proc.pid
    groups = {g for _, _, ppid, g in _procs() if ppid == pid}
    r.stop(sig=9)
    groups -= {pid, os.getpgrp(), 0, 1}
    deadline = time.time() + 5
    while groups and time.time() < deadline:
        groups &= _live_groups()
        time.sleep(0.05)
    for g in groups:
        try:
            os.killpg(g, 9)
        except OSError:
            pass
    return len(groups)


def _worker(r):
    """The worker id of r's running process (its last start)."""
    recs = r.log_records("pipeline workers started")
    if not recs:
        raise AssertionError("no 'pipeline workers started' line in the log")
    return recs[-1]["worker"]


def _check_recordings(r, org_id, rids):
    """completed; one transcript, one document; chunks idx 0..n-1, n >= 1;
    one job a stage, done. Returns {recording: {stage: attempts}}."""
    rows = _q(r, "SELECT r.id, r.status,"
                 " (SELECT count(*) FROM transcripts t WHERE t.recording_id = r.id),"
                 " (SELECT count(*) FROM documents d WHERE d.recording_id = r.id),"
                 " (SELECT coalesce(string_agg(idx::text, ',' ORDER BY idx), '')"
                 "  FROM transcript_chunks c WHERE c.recording_id = r.id),"
                 " (SELECT string_agg(stage || ':' || status || ':' || attempts, ','"
                 "  ORDER BY stage, id) FROM jobs j WHERE j.recording_id = r.id)"
                 f" FROM recordings r WHERE r.org_id = '{org_id}'")
    eq(sorted(row[0] for row in rows), sorted(rids), "recordings of the organization")
    attempts = {}
    for rid, status, nt, nd, idx, jobs in rows:
        eq(status, "completed", f"status of {rid}")
        eq((nt, nd), ("1", "1"), f"(transcripts, documents) of {rid}")
        got = [int(i) for i in idx.split(",")] if idx else []
        if not got or got != list(range(len(got))):
            raise AssertionError(f"chunk idx of {rid}: {got}")
        js = [j.split(":") for j in jobs.split(",")]
        eq([(s, st) for s, st, _ in js], [(s, "done") for s in STAGES], f"jobs of {rid}")
        attempts[rid] = {s: int(a) for s, _, a in js}
    return attempts


# ---- 1. crash safety -----------------------------------------------------------------

def crash_loop_every_recording_completes_once():
    seed = int(os.environ.get("REELD_CRASH_SEED", "20261124"))
    rng = random.Random(seed)
    print(f"# seed {seed} (set REELD_CRASH_SEED to replay)", flush=True)
    print(f"# seed {seed}", file=sys.stderr, flush=True)
    t0 = time.time()
    r = Reeld(env={"REELD_JOB_LEASE_S": "2", "REELD_JOB_MAX_ATTEMPTS": "20",
                   "REELD_JOB_BACKOFF_MS": "50"})
    r.start()
    org = Org(r, "crash")
    base = int(psql(f"SELECT coalesce(max(id), 0) FROM events WHERE org_id = '{org.id}'",
                    db=r.db))
    fol = sseutil.Follower(r, org.owner)
    fol.start()
    try:
        fol.wait_connected()
        rids = [_upload(r, org, f"Crash {i:02d}") for i in range(N_CRASH)]
        kills = []
        for k in range(KILLS):
            time.sleep(rng.uniform(0.3, 2.5))
            running = int(psql("SELECT count(*) FROM jobs WHERE status = 'running'"
                               f" AND leased_by = '{_worker(r)}'", db=r.db))
            left = int(psql(f"SELECT count(*) FROM recordings WHERE org_id = '{org.id}'"
                            " AND status <> 'completed'", db=r.db))
            orphans = _kill9(r)
            r.start()  # same port, data dir and database
            eq(len(r.log_records("pipeline workers started")), k + 2, "worker starts")
            fol.wait_connected(k + 2)  # resumed from the new process
            kills.append({"held": running, "unfinished": left, "orphans": orphans})
            eq(orphans, 0, "child groups outliving the killed reeld")
        print(f"# kills: {kills}", flush=True)
        if not all(k["unfinished"] > 0 for k in kills[:5]):
            raise AssertionError(f"recordings finished before the 5th kill: {kills}")
        _wait_completed(r, org.id, N_CRASH, t0 + 165)
        last = int(psql(f"SELECT max(id) FROM events WHERE org_id = '{org.id}'", db=r.db))
        fol.wait_for(last)
    finally:
        fol.stop()
    attempts = _check_recordings(r, org.id, rids)
    _one_stage_done_each([r], org, rids, killed=True)
    reruns = sum(a - 1 for per in attempts.values() for a in per.values())
    print(f"# stage runs lost to kills: {reruns}; {time.time() - t0:.1f} s", flush=True)
    if reruns == 0:
        raise AssertionError(f"no kill interrupted a job (kills {kills})")
    # the stream: one connection a process, each after the first resumed
    eq(len(fol.resumed), fol.connects - 1, "streams resumed with Last-Event-ID")
    got = [int(e["id"]) for e in fol.events]
    want = [int(x) for x in psql(f"SELECT id FROM events WHERE org_id = '{org.id}' AND id > {base}"
                                 " ORDER BY id", db=r.db).split()]
    if got != want:
        missing = sorted(set(want) - set(got))[:10]
        dup = [i for i, c in collections.Counter(got).items() if c > 1][:10]
        raise AssertionError(f"stream ids differ from the table: {len(got)} vs {len(want)},"
                             f" missing {missing}, duplicated {dup}, resumed at {fol.resumed}")
    # each recording's statuses, on the stream and in the table, in order and once each
    seen = collections.defaultdict(list)
    for e in fol.events:
        if e.get("event") == "recording.status":
            seen[e["data"]["recording_id"]].append(e["data"]["status"])
    table = collections.defaultdict(list)
    for rid, status in _q(r, "SELECT recording_id, data->>'status' FROM events"
                             f" WHERE org_id = '{org.id}' AND type = 'recording.status'"
                             " ORDER BY id"):
        table[rid].append(status)
    for rid in rids:
        eq(seen[rid], PIPELINE_ORDER, f"statuses of {rid} on the stream")
        eq(table[rid], PIPELINE_ORDER, f"statuses of {rid} in the events table")
    r.stop()


# ---- 2. two processes ------------------------------------------------------------------

def two_processes_split_the_jobs_none_done_twice():
    shared = tempfile.mkdtemp(prefix="reeld-shared-")
    _state["shared"] = shared
    env = {"REELD_DATA_DIR": shared, "REELD_JOB_LEASE_S": "3", "REELD_JOB_BACKOFF_MS": "50",
           "REELD_JOB_MAX_ATTEMPTS": "5"}
    p1 = Reeld(env=env)
    p1.start()
    p2 = Reeld(env=env, db=p1.db)
    p2.start()
    _state["p"] = (p1, p2)
    w1, w2 = _worker(p1), _worker(p2)
    if w1 == w2:
        raise AssertionError(f"both processes are worker {w1}")
    org = Org(p1, "two")
    _state["org"] = org
    t0 = time.time()
    rids = [_upload(p1 if i % 2 == 0 else p2, org, f"Split {i:02d}") for i in range(N_SPLIT)]
    _wait_completed(p1, org.id, N_SPLIT, t0 + 65)
    _check_recordings(p1, org.id, rids)
    by = collections.Counter(w for w, in _q(p1, f"SELECT leased_by FROM jobs"
                                               f" WHERE org_id = '{org.id}' AND status = 'done'"))
    print(f"# done jobs by worker: {dict(by)}; {time.time() - t0:.1f} s", flush=True)
    eq(set(by), {w1, w2}, "workers of the done jobs")
    _one_stage_done_each(_state["p"], org, rids)


def _one_stage_done_each(procs, org, rids, killed=False):
    """Across the logs of procs (every start of each), one "stage done" a
    (recording, stage) of rids, logged by the process that jobs.leased_by
    names (the worker of the last "pipeline workers started" above it).
    killed: a process was SIGKILLed, possibly between a stage's commit and
    its log line, so a line may be missing (the database, checked apart,
    says the stage is done once); never two."""
    logged = collections.defaultdict(list)
    for p in procs:
        worker = None
        for rec in p.log_records():
            if rec.get("msg") == "pipeline workers started":
                worker = rec["worker"]
            elif rec.get("msg") == "stage done" and rec["recording_id"] in rids:
                logged[(rec["recording_id"], rec["stage"])].append(worker)
    twice = {k: v for k, v in logged.items() if len(v) > 1}
    if twice:
        raise AssertionError(f"stages done more than once: {twice}")
    want = sorted((rid, s) for rid in rids for s in STAGES)
    if killed:
        missing = len(want) - len(logged)
        if not set(logged) <= set(want) or missing > KILLS:
            raise AssertionError(f"stages logged done: {sorted(logged)}")
    else:
        eq(sorted(logged), want, "stages logged done")
    for rid, stage, who in _q(procs[0], f"SELECT recording_id, stage, leased_by FROM jobs"
                                        f" WHERE org_id = '{org.id}'"):
        if rid in rids and (rid, stage) in logged:
            eq(logged[(rid, stage)], [who], f"worker that logged {stage} of {rid} done")


def killed_process_jobs_are_taken_over_after_the_lease():
    p1, p2 = _state["p"]
    org = _state["org"]
    w1, w2 = _worker(p1), _worker(p2)
    t0 = time.time()
    rids = [_upload(p2, org, f"Takeover {i:02d}") for i in range(N_TAKEOVER)]
    # a transcription lasts long enough for the kill to land while it runs
    deadline = time.time() + 30
    while time.time() < deadline:
        if int(psql(f"SELECT count(*) FROM jobs WHERE status = 'running'"
                    f" AND stage = 'transcription' AND leased_by = '{w1}'", db=p1.db)) > 0:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("process 1 never ran a transcription")
    _kill9(p1)
    # what it held when it died: nobody can touch these before the lease ends
    held = _q(p1, "SELECT id, stage, to_char(lease_expires_at AT TIME ZONE 'UTC',"
                  " 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM jobs"
                  f" WHERE status = 'running' AND leased_by = '{w1}'")
    if not held:
        raise AssertionError("process 1 finished its jobs before the kill landed")
    _wait_completed(p2, org.id, N_SPLIT + N_TAKEOVER, time.time() + 55)
    print(f"# process 1 died holding {[(j, s) for j, s, _ in held]};"
          f" {time.time() - t0:.1f} s", flush=True)
    started = collections.defaultdict(list)
    for rec in p2.log_records("stage started"):
        started[str(rec["job_id"])].append(rec["ts"])
    for job, stage, lease_end in held:
        row = _q(p2, f"SELECT status, leased_by, attempts FROM jobs WHERE id = {job}")[0]
        eq(row[:2], ["done", w2], f"{stage} job {job} (status, leased_by)")
        if int(row[2]) < 2:
            raise AssertionError(f"{stage} job {job}: attempts {row[2]}, want >= 2")
        if not started[job] or min(started[job]) < lease_end:
            raise AssertionError(f"{stage} job {job} started by process 2 at {started[job]},"
                                 f" its lease ended {lease_end}")
    _check_recordings(p2, org.id, _q_rids(p2, org.id))
    _one_stage_done_each(_state["p"], org, rids, killed=True)
    p2.stop()


def _q_rids(r, org_id):
    return [x for x, in _q(r, f"SELECT id FROM recordings WHERE org_id = '{org_id}'")]


run_all(globals())
shutil.rmtree(_tmp, ignore_errors=True)
if "shared" in _state and not os.environ.get("REELD_TEST_KEEP"):
    shutil.rmtree(_state["shared"], ignore_errors=True)
done()
