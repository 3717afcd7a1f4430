#!/usr/bin/env python3
"""Uploads one small media file N times to reeld as N recordings, for
`bench/run pipeline` (bench/pipeline.sh).

Each recording is one tus 1.0.0 creation-with-upload request: POST
/api/uploads/ with Upload-Length, Upload-Metadata (filename, filetype and a
title "TITLE-PREFIX NNNN") and the whole body. reeld answers 201 with
Upload-Offset equal to the length once the bytes are durable and the
recording is `uploaded` (its first pipeline job enqueued in the same
statement). CLIENTS threads each keep one keep-alive connection.

Usage: pipeline_upload.py --port P --token T --file F --count N
       [--clients C] [--type MIME] [--title-prefix S]

Prints one line: "uploads ok=N failed=0 secs=S per_s=R"; exits 1 when any
upload did not answer 201 with the full offset (the first few failures
are printed on stderr)."""
import argparse
import base64
import http.client
import os
import sys
import threading
import time


def b64(s):
    return base64.b64encode(s.encode()).decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--type", default="audio/mpeg")
    ap.add_argument("--title-prefix", default="bench")
    a = ap.parse_args()
    if a.count < 1 or a.clients < 1:
        sys.exit("pipeline_upload: --count and --clients must be >= 1")
    with open(a.file, "rb") as f:
        body = f.read()
    if not body:
        sys.exit(f"pipeline_upload: {a.file} is empty")
    name = os.path.basename(a.file)
    lock = threading.Lock()
    nxt = [0]
    ok = [0]
    errors = []

    def take():
        with lock:
            if nxt[0] >= a.count:
                return None
            nxt[0] += 1
            return nxt[0]

    def worker():
        conn = None
        while True:
            i = take()
            if i is None:
                break
            meta = (f"filename {b64(name)},filetype {b64(a.type)},"
                    f"title {b64(f'{a.title_prefix} {i:04d}')}")
            hdrs = {"Authorization": f"Bearer {a.token}", "Tus-Resumable": "1.0.0",
                    "Upload-Length": str(len(body)), "Upload-Metadata": meta,
                    "Content-Type": "application/offset+octet-stream"}
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=60)
                conn.request("POST", "/api/uploads/", body=body, headers=hdrs)
                resp = conn.getresponse()
                raw = resp.read()
                off = resp.getheader("Upload-Offset")
                good = resp.status == 201 and off == str(len(body))
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                good, raw, off = False, str(e).encode(), None
                resp = None
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                if good:
                    ok[0] += 1
                else:
                    errors.append(f"upload {i}: status {resp.status if resp else 'none'}, "
                                  f"Upload-Offset {off}: {raw[:200]!r}")
        if conn is not None:
            conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(min(a.clients, a.count))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.monotonic() - t0
    print(f"uploads ok={ok[0]} failed={len(errors)} secs={secs:.3f} "
          f"per_s={ok[0] / secs:.1f}", flush=True)
    for e in errors[:5]:
        print(e, file=sys.stderr)
    sys.exit(0 if not errors else 1)


if __name__ == "__main__":
    main()
