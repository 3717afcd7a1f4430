"""Auth and tenancy over HTTP (SPEC 6): 401s, organizations, roles."""
import base64
import json
import subprocess
import time

from harness import run_all, BIN, Reeld, assert_error, check, done, eq, psql

r = Reeld().start()


def _b64(d):
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def missing_token_is_401():
    st, js, h, _ = r.get("/api/organizations")
    assert_error(st, js, 401, "unauthenticated")
    eq(h.get("www-authenticate"), "Bearer")


def garbage_and_forged_tokens_are_401():
    good = r.token("forger")
    head, payload, sig = good.split(".")
    forged_payload = _b64({"sub": "admin", "iss": "reeld-dev", "exp": int(time.time()) + 600})
    cases = ["x", "a.b", good + ".x", f"{head}.{forged_payload}.{sig}",
             _b64({"alg": "none", "typ": "JWT"}) + "." + forged_payload + ".",
             _b64({"alg": "HS256", "kid": "dev"}) + "." + forged_payload + "." + sig]
    for t in cases:
        st, js, _, _ = r.get("/api/organizations", token=t)
        assert_error(st, js, 401, "unauthenticated")


def expired_token_is_401():
    t = r.token("old-user", ttl=-300)
    st, js, _, _ = r.get("/api/organizations", token=t)
    assert_error(st, js, 401, "unauthenticated")


def cached_token_still_expires_on_time():
    # exp 58 s ago: valid for two more seconds within the 60 s skew. The
    # first use verifies and caches the verdict; after expiry the cached
    # verdict must not be used.
    t = r.token("cache-expiry", ttl=-58)
    r.post("/api/organizations", {"name": "Cache Expiry"}, token=t)
    eq(r.get("/api/organizations/current", token=t)[0], 200, "while valid")
    time.sleep(3)
    st, js, _, _ = r.get("/api/organizations/current", token=t)
    assert_error(st, js, 401, "unauthenticated")


def token_signed_by_another_key_is_401():
    other = Reeld(db=r.db)  # a different data dir has a different dev key
    t = other.token("stranger")
    st, js, _, _ = r.get("/api/organizations", token=t)
    assert_error(st, js, 401, "unauthenticated")


def create_organization_makes_caller_admin():
    t = r.token("org-alice", email="alice@example.com", name="Alice")
    st, js, _, _ = r.post("/api/organizations", {"name": "Acme Widgets"}, token=t)
    eq(st, 201, "status")
    org = js["organization"]
    eq(org["name"], "Acme Widgets")
    eq(org["role"], "admin")
    eq(org["plan"], "free")
    if not org["slug"].startswith("acme-widgets"):
        raise AssertionError(org["slug"])
    st, js, _, _ = r.get("/api/organizations/current", token=t)
    eq(st, 200)
    eq(js["organization"]["id"], org["id"])
    eq([m["email"] for m in js["members"]], ["alice@example.com"])
    eq(js["members"][0]["role"], "admin")


def same_name_gets_a_distinct_slug():
    t = r.token("slug-user")
    a = r.post("/api/organizations", {"name": "Same Name"}, token=t)[1]["organization"]
    b = r.post("/api/organizations", {"name": "Same Name"}, token=t)[1]["organization"]
    if a["slug"] == b["slug"]:
        raise AssertionError("duplicate slug")


def create_validates_name():
    t = r.token("validator")
    for body in [{}, {"name": ""}, {"name": "   "}, {"name": 5}, {"name": "x" * 201}]:
        st, js, _, _ = r.post("/api/organizations", body, token=t)
        assert_error(st, js, 422, "invalid_request")
    st, js, _, _ = r.post("/api/organizations", [1, 2], token=t)
    assert_error(st, js, 400, "invalid_request")


def list_shows_each_membership_with_role():
    t = r.token("lister")
    o1 = r.post("/api/organizations", {"name": "First"}, token=t)[1]["organization"]
    owner = r.token("other-owner")
    o2 = r.post("/api/organizations", {"name": "Second"}, token=owner)[1]["organization"]
    # a verified org claim makes lister a member of Second
    t2 = r.token("lister", org=o2["id"], role="member")
    eq(r.get("/api/organizations/current", token=t2)[0], 200)
    st, js, _, _ = r.get("/api/organizations", token=t)
    eq(st, 200)
    got = {o["id"]: o["role"] for o in js["organizations"]}
    eq(got, {o1["id"]: "admin", o2["id"]: "member"})


def several_memberships_need_x_org_id():
    t = r.token("multi")
    a = r.post("/api/organizations", {"name": "A"}, token=t)[1]["organization"]
    b = r.post("/api/organizations", {"name": "B"}, token=t)[1]["organization"]
    st, js, _, _ = r.get("/api/organizations/current", token=t)
    assert_error(st, js, 400, "invalid_request")
    st, js, _, _ = r.get("/api/organizations/current", token=t, headers={"X-Org-Id": b["id"]})
    eq(st, 200)
    eq(js["organization"]["id"], b["id"])
    del a


def x_org_id_of_a_foreign_org_is_403():
    t = r.token("nosy")
    r.post("/api/organizations", {"name": "Mine"}, token=t)
    owner = r.token("foreign-owner")
    f = r.post("/api/organizations", {"name": "Foreign"}, token=owner)[1]["organization"]
    for hdr in [f["id"], "not-a-uuid"]:
        st, js, _, _ = r.get("/api/organizations/current", token=t, headers={"X-Org-Id": hdr})
        assert_error(st, js, 403, "forbidden")


def no_membership_is_403_for_org_routes():
    t = r.token("lonely")
    st, js, _, _ = r.get("/api/organizations/current", token=t)
    assert_error(st, js, 403, "forbidden")
    st, js, _, _ = r.get("/api/organizations", token=t)
    eq(st, 200)
    eq(js["organizations"], [])


def members_list_only_for_admins():
    admin = r.token("boss")
    org = r.post("/api/organizations", {"name": "Team"}, token=admin)[1]["organization"]
    member = r.token("worker", org=org["id"], role="member")
    st, js, _, _ = r.get("/api/organizations/current", token=member)
    eq(st, 200)
    eq(js["organization"]["role"], "member")
    if "members" in js:
        raise AssertionError("member sees the member list")
    st, js, _, _ = r.get("/api/organizations/current", token=admin)
    eq(sorted(m["role"] for m in js["members"]), ["admin", "member"])


def clerk_org_claims_are_mirrored_on_first_sight():
    t = r.token("clerk-user", org="org_2abcDEF", role="admin")
    st, js, _, _ = r.get("/api/organizations/current", token=t)
    eq(st, 200)
    eq(js["organization"]["role"], "admin")
    eq(psql("SELECT count(*) FROM organizations WHERE external_id = 'org_2abcDEF'", db=r.db), "1")
    eq(psql("SELECT role FROM memberships m JOIN organizations o ON o.id = m.org_id "
            "WHERE o.external_id = 'org_2abcDEF'", db=r.db), "admin")


def role_change_in_token_is_mirrored():
    t = r.token("demoted", org="org_roles", role="admin")
    eq(r.get("/api/organizations/current", token=t)[1]["organization"]["role"], "admin")
    t = r.token("demoted", org="org_roles", role="member")
    eq(r.get("/api/organizations/current", token=t)[1]["organization"]["role"], "member")
    eq(psql("SELECT m.role FROM memberships m JOIN organizations o ON o.id = m.org_id "
            "JOIN users u ON u.id = m.user_id WHERE o.external_id = 'org_roles' "
            "AND u.external_id = 'demoted'", db=r.db), "member")


def token_subcommand_rejects_bad_role():
    out = subprocess.run([BIN, "token", "--sub", "x", "--role", "owner"], env=r.env,
                         capture_output=True, text=True)
    eq(out.returncode, 2)


def access_log_names_user_and_org():
    t = r.token("logged")
    org = r.post("/api/organizations", {"name": "Logged"}, token=t)[1]["organization"]
    r.get("/api/organizations/current", token=t, headers={"X-Request-Id": "log-check-1"})
    lines = [json.loads(ln) for ln in r.log().splitlines() if "log-check-1" in ln]
    if not lines:
        raise AssertionError("no access line")
    ln = lines[-1]
    eq(ln["msg"], "request")
    eq(ln["route"], "/api/organizations/current")
    eq(ln["status"], 200)
    eq(ln["org"], org["id"])
    for k in ("method", "bytes", "ms", "user", "ts", "level"):
        if k not in ln:
            raise AssertionError(f"access line lacks {k}")


def metrics_count_requests_by_route():
    r.get("/healthz")
    st, _, h, raw = r.get("/metrics")
    eq(st, 200)
    text = raw.decode()
    if 'reeld_http_requests_total{route="/healthz",method="GET",status="200"}' not in text:
        raise AssertionError("no healthz counter")
    for name in ("reeld_http_request_duration_seconds_bucket", "reeld_http_connections_open",
                 "reeld_db_connections_ready"):
        if name not in text:
            raise AssertionError(f"missing {name}")


def readyz_reports_schema_version():
    st, js, _, _ = r.get("/readyz")
    eq(st, 200)
    eq(js["status"], "ready")


run_all(globals())
r.stop()
done()
