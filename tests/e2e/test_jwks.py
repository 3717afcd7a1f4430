"""REELD_AUTH=jwks: keys from a JWKS URL (fetched through the loop,
cached, refetched once on an unknown kid, rate-limited) or a file."""
import base64
import json
import os
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import run_all, BIN, Reeld, assert_error, check, done, eq

# A signer: dev mode in its own data dir gives us tokens (kid "dev",
# iss "reeld-dev") and the key whose public half we publish.
signer_dir = tempfile.mkdtemp(prefix="reeld-signer-")
senv = dict(os.environ, REELD_AUTH="dev", REELD_DATA_DIR=signer_dir)


def _token(sub, ttl=600):
    out = subprocess.run([BIN, "token", "--sub", sub, "--ttl", str(ttl)], env=senv,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


_token("bootstrap")  # creates the key
text = subprocess.run(["openssl", "ec", "-in", os.path.join(signer_dir, "dev-jwt-key.pem"),
                       "-noout", "-text"], capture_output=True, text=True, check=True).stdout
pub_hex = "".join(text.split("pub:")[1].split("ASN1")[0].split()).replace(":", "")
pub = bytes.fromhex(pub_hex)
assert pub[0] == 4 and len(pub) == 65


def _b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _jwk(kid):
    return {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": _b64u(pub[1:33]), "y": _b64u(pub[33:])}


class Keys:
    kid = "old"   # what the server publishes now
    hits = 0
    status = 200


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        Keys.hits += 1
        body = json.dumps({"keys": [_jwk(Keys.kid)]}).encode()
        self.send_response(Keys.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{srv.server_address[1]}/jwks"

def _started(env):
    """A jwks-mode reeld whose start-up JWKS fetch has completed."""
    before = Keys.hits
    rd = Reeld(env=env).start()
    deadline = time.time() + 10
    while Keys.hits == before and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # let reeld parse what it fetched
    return rd


r = _started({"REELD_AUTH": "jwks", "REELD_JWKS_URL": url, "REELD_JWT_ISSUER": "reeld-dev"})


def unknown_kid_triggers_one_refresh_then_verifies():
    # the server publishes kid "old"; our tokens say "dev"
    Keys.kid = "dev"  # rotated at the IdP after reeld's first fetch
    before = Keys.hits
    st, js, _, _ = r.get("/api/organizations", token=_token("jwks-alice"))
    eq(st, 200, "after refresh")
    eq(Keys.hits - before, 1, "fetches")
    # known now: no more fetches
    r.get("/api/organizations", token=_token("jwks-alice"))
    eq(Keys.hits - before, 1, "fetches after")


def unknown_kid_refresh_is_rate_limited():
    Keys.kid = "rotated-away"
    r3 = _started({"REELD_AUTH": "jwks", "REELD_JWKS_URL": url, "REELD_JWT_ISSUER": "reeld-dev"})
    try:
        before = Keys.hits
        for _ in range(5):
            st, js, _, _ = r3.get("/api/organizations", token=_token("jwks-bob"))
            assert_error(st, js, 401, "unauthenticated")
        eq(Keys.hits - before, 1, "JWKS fetches for 5 unknown-kid tokens")
    finally:
        r3.stop()
        Keys.kid = "dev"


def wrong_issuer_is_401():
    r4 = Reeld(env={"REELD_AUTH": "jwks", "REELD_JWKS_URL": url,
                    "REELD_JWT_ISSUER": "https://clerk.example"}).start()
    try:
        st, js, _, _ = r4.get("/api/organizations", token=_token("jwks-carol"))
        assert_error(st, js, 401, "unauthenticated")
    finally:
        r4.stop()


def audience_required_when_configured():
    r5 = Reeld(env={"REELD_AUTH": "jwks", "REELD_JWKS_URL": url, "REELD_JWT_ISSUER": "reeld-dev",
                    "REELD_JWT_AUDIENCE": "reeld-api"}).start()
    try:
        st, js, _, _ = r5.get("/api/organizations", token=_token("jwks-dave"))
        assert_error(st, js, 401, "unauthenticated")
    finally:
        r5.stop()


def jwks_file_mode_verifies():
    path = os.path.join(signer_dir, "jwks.json")
    with open(path, "w") as f:
        json.dump({"keys": [_jwk("dev")]}, f)
    r6 = Reeld(env={"REELD_AUTH": "jwks", "REELD_JWKS_FILE": path,
                    "REELD_JWT_ISSUER": "reeld-dev"}).start()
    try:
        eq(r6.get("/api/organizations", token=_token("file-erin"))[0], 200)
    finally:
        r6.stop()


def jwks_mode_without_issuer_refuses_to_start():
    out = subprocess.run([BIN, "serve"], env=dict(r.env, REELD_JWT_ISSUER="",
                                                  REELD_LISTEN="127.0.0.1:1"),
                         capture_output=True, text=True, timeout=20)
    eq(out.returncode, 1)
    if "REELD_JWT_ISSUER" not in out.stderr:
        raise AssertionError(out.stderr)


def bad_config_value_names_the_variable():
    out = subprocess.run([BIN, "serve"], env=dict(r.env, REELD_DB_POOL="lots"),
                         capture_output=True, text=True, timeout=20)
    eq(out.returncode, 1)
    if "REELD_DB_POOL" not in out.stderr or len(out.stderr.strip().splitlines()) != 1:
        raise AssertionError(out.stderr)


def dev_token_refused_in_jwks_mode():
    out = subprocess.run([BIN, "token", "--sub", "x"], env=r.env, capture_output=True,
                         text=True, timeout=20)
    eq(out.returncode, 2)


run_all(globals())
r.stop()
srv.shutdown()
done()
