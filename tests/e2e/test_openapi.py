#!/usr/bin/env python3
"""schema/openapi.yaml and README.md agree with the binary.

`$REELD_BIN routes` lists every registered route ("METHOD /pattern",
":name" for a path parameter, written {name} in OpenAPI); the document
must describe exactly those operations, each with an error response and
the right security, and README.md must carry the current output of
`$REELD_BIN config-table`. Needs no database.

The document is read with the small line-based YAML reader below, not
PyYAML: the tests install only Debian's python3, and python3-yaml is not
among the packages scripts/deps.sh installs. The reader handles the plain
subset that schema/openapi.yaml keeps to (see the comment at its top) and
rejects anything else with the line number. When PyYAML happens to be
importable, openapi_document_well_formed also checks that both readers see
the same document.
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BIN, ROOT, done, run_all  # noqa: E402

DOC = os.path.join(ROOT, "schema", "openapi.yaml")
README = os.path.join(ROOT, "README.md")
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# SPEC section 5
ERROR_CODES = ["unauthenticated", "forbidden", "not_found", "conflict", "payload_too_large",
               "unsupported_media_type", "invalid_request", "rate_limited", "quota_exceeded",
               "unavailable", "internal"]


# ---- a reader for the YAML subset schema/openapi.yaml is written in -------

class _Reader:
    """Block mappings and sequences by indentation, `|`/`>` block scalars,
    quoted and plain one-line scalars, one-line flow lists of scalars.
    Scalars stay strings (no int/bool typing): the checks need none."""

    def __init__(self, text):
        self.lines = text.split("\n")
        self.i = 0

    def _fail(self, why):
        raise ValueError(f"{os.path.relpath(DOC, ROOT)} line {self.i + 1}: {why} "
                         "(outside the YAML subset the test reads)")

    def _peek(self):
        """(indent, content) of the next meaningful line, or None."""
        while self.i < len(self.lines):
            line = self.lines[self.i].rstrip()
            body = line.lstrip(" ")
            if body == "" or body.startswith("#"):
                self.i += 1
                continue
            if body.startswith("\t"):
                self._fail("tab in indentation")
            return len(line) - len(body), body
        return None

    @staticmethod
    def _split_key(body):
        """(key, rest) for a `key:` or `key: value` line, else None."""
        m = re.match(r"""^('(?:[^']|'')*'|"(?:[^"\\]|\\.)*")\s*:(?:\s+(.*))?$""", body)
        if m:
            return _Reader._quoted(m.group(1)), m.group(2) or ""
        if body[0] in "'\"[{&*!|>%@`":
            return None
        m = re.match(r"^(.*?):(?:\s+(.*))?$", body)
        if not m or m.group(1).endswith(" "):
            return None
        return m.group(1), m.group(2) or ""

    @staticmethod
    def _quoted(s):
        if s[0] == "'":
            return s[1:-1].replace("''", "'")
        out, k = [], 1
        while k < len(s) - 1:
            if s[k] == "\\":
                k += 1
                out.append({"n": "\n", "t": "\t"}.get(s[k], s[k]))
            else:
                out.append(s[k])
            k += 1
        return "".join(out)

    def _scalar(self, v):
        if v.startswith(("'", '"')):
            if len(v) < 2 or v[-1] != v[0]:
                self._fail("unterminated or trailing text after a quoted scalar")
            return self._quoted(v)
        if v.startswith("["):
            if not v.endswith("]") or "[" in v[1:-1] or "{" in v[1:-1]:
                self._fail("flow lists must be one line of plain or quoted scalars")
            inner = v[1:-1].strip()
            return [self._scalar(x.strip()) for x in inner.split(",")] if inner else []
        if v.startswith("{"):
            if v == "{}":
                return {}
            self._fail("flow mappings are not read")
        if v[0] in "&*!%@`" or " #" in v:
            self._fail("anchors, aliases, tags and trailing comments are not read")
        return v

    def _block_scalar(self, key_indent, style):
        lines = []
        while self.i < len(self.lines):
            line = self.lines[self.i].rstrip()
            body = line.lstrip(" ")
            if body and len(line) - len(body) <= key_indent:
                break
            lines.append(line)
            self.i += 1
        while lines and not lines[-1]:
            lines.pop()
        ind = min((len(x) - len(x.lstrip(" ")) for x in lines if x), default=0)
        lines = [x[ind:] for x in lines]
        if style[0] == "|":
            text = "\n".join(lines)
        else:  # folded: lines joined by a space, an empty line is a newline
            text, prev_empty = "", True
            for x in lines:
                if not x:
                    text += "\n"
                    prev_empty = True
                else:
                    text += ("" if prev_empty else " ") + x
                    prev_empty = False
        if not style.endswith("-") and lines:
            text += "\n"
        return text

    def node(self, indent):
        p = self._peek()
        if p is None or p[0] < indent:
            return None
        if p[1] == "-" or p[1].startswith("- "):
            return self._seq(p[0])
        return self._map(p[0])

    def _map(self, ind):
        d = {}
        while True:
            p = self._peek()
            if p is None or p[0] < ind:
                return d
            if p[0] > ind:
                self._fail("unexpected indentation (multi-line plain scalars are not read)")
            kv = self._split_key(p[1])
            if kv is None:
                self._fail("expected `key:` or `key: value`")
            key, rest = kv
            if key in d:
                self._fail(f"duplicate key {key!r}")
            self.i += 1
            if rest in ("|", "|-", ">", ">-"):
                d[key] = self._block_scalar(ind, rest)
            elif rest:
                d[key] = self._scalar(rest)
            else:
                c = self._peek()
                if c is not None and c[0] == ind and c[1].startswith("-"):
                    self._fail("indent a sequence under its key")
                d[key] = self.node(ind + 1) if c is not None and c[0] > ind else None

    def _seq(self, ind):
        items = []
        while True:
            p = self._peek()
            if p is None or p[0] < ind:
                return items
            if p[0] > ind or not (p[1] == "-" or p[1].startswith("- ")):
                self._fail("expected `- item`")
            # "- key: v" becomes "  key: v": the item's mapping at ind + 2
            rest = p[1][1:].lstrip(" ")
            if rest and self._split_key(rest) is None:
                self.i += 1
                items.append(self._scalar(rest))
                continue
            if not rest:
                self.i += 1
                items.append(self.node(ind + 1))
                continue
            self.lines[self.i] = " " * (ind + 2) + rest
            items.append(self._map(ind + 2))


def _load_doc():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    r = _Reader(text)
    doc = r.node(0)
    if r._peek() is not None:
        r._fail("text after the document")
    if not isinstance(doc, dict):
        raise ValueError("schema/openapi.yaml is not a mapping")
    return doc, text


def _operations(doc):
    """{(METHOD, path): operation} of the document."""
    ops = {}
    for path, item in (doc.get("paths") or {}).items():
        for method, op in (item or {}).items():
            if method in METHODS:
                ops[(method.upper(), path)] = op or {}
    return ops


def _routes():
    """{(METHOD, path)} from `$REELD_BIN routes`, :param written {param}."""
    out = subprocess.run([BIN, "routes"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"{BIN} routes exited {out.returncode}: {out.stderr.strip()}")
    routes = set()
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        method, _, pattern = line.strip().partition(" ")
        path = re.sub(r"/:([A-Za-z_][A-Za-z0-9_]*)", r"/{\1}", pattern.strip())
        routes.add((method, path))
    if not routes:
        raise AssertionError(f"{BIN} routes printed no route")
    return routes


def _fmt(pairs):
    return ", ".join(f"{m} {p}" for m, p in sorted(pairs, key=lambda x: (x[1], x[0])))


def _resolve(doc, ref):
    if not ref.startswith("#/"):
        raise AssertionError(f"only local $refs are used: {ref}")
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise AssertionError(f"$ref {ref} points at nothing")
        node = node[part]
    return node


def _walk_refs(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                out.append(v)
            else:
                _walk_refs(v, out)
    elif isinstance(node, list):
        for v in node:
            _walk_refs(v, out)


def _normalize(node):
    """PyYAML's view with scalars as the line reader keeps them."""
    if isinstance(node, dict):
        return {str(k): _normalize(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_normalize(v) for v in node]
    if isinstance(node, bool):
        return "true" if node else "false"
    if node is None:
        return None
    return str(node)


def _first_difference(a, b, where="$"):
    if type(a) is not type(b):
        return f"{where}: {a!r} vs {b!r}"
    if isinstance(a, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in a or k not in b:
                return f"{where}.{k}: present in only one reading"
            d = _first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} vs {len(b)} items"
        for n, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{where}[{n}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} vs {b!r}"


# ---- tests ---------------------------------------------------------------

def openapi_documents_every_route():
    doc, _ = _load_doc()
    missing = _routes() - set(_operations(doc))
    if missing:
        raise AssertionError(f"routes not in schema/openapi.yaml: {_fmt(missing)}")


def openapi_has_no_stale_route():
    doc, _ = _load_doc()
    stale = set(_operations(doc)) - _routes()
    if stale:
        raise AssertionError(f"documented but not served: {_fmt(stale)}")


def openapi_every_operation_declares_an_error():
    doc, _ = _load_doc()
    bare = [k for k, op in _operations(doc).items()
            if not any(re.fullmatch(r"[45]([0-9]{2}|XX)", c) for c in (op.get("responses") or {}))]
    if bare:
        raise AssertionError(f"no 4xx/5xx response: {_fmt(bare)}")


def openapi_api_operations_require_bearer():
    doc, _ = _load_doc()
    scheme = ((doc.get("components") or {}).get("securitySchemes") or {}).get("bearerAuth")
    if not scheme or scheme.get("type") != "http" or scheme.get("scheme") != "bearer":
        raise AssertionError("components.securitySchemes.bearerAuth is not an http bearer scheme")
    if "security" in doc:
        raise AssertionError("no top-level security: each operation states its own")
    wrong = []
    for (method, path), op in _operations(doc).items():
        sec = op.get("security")
        if sec is None:
            wrong.append(f"{method} {path} (no security)")
            continue
        # webhooks (SPEC 6, 8, 10) are signed by their callers, not bearer
        if path.startswith("/api/") and not path.startswith("/api/webhook"):
            if not any(isinstance(s, dict) and "bearerAuth" in s for s in sec):
                wrong.append(f"{method} {path} (no bearerAuth)")
    if wrong:
        raise AssertionError("; ".join(wrong))


def openapi_responses_declare_request_id():
    doc, _ = _load_doc()
    lacking = []
    for (method, path), op in _operations(doc).items():
        for code, resp in (op.get("responses") or {}).items():
            if isinstance(resp, dict) and "$ref" in resp:
                resp = _resolve(doc, resp["$ref"])
            if "X-Request-Id" not in ((resp or {}).get("headers") or {}):
                lacking.append(f"{method} {path} {code}")
    if lacking:
        raise AssertionError(f"responses without the X-Request-Id header: {', '.join(lacking)}")


def openapi_document_well_formed():
    doc, text = _load_doc()
    if not re.fullmatch(r"3\.1\.\d+", doc.get("openapi") or ""):
        raise AssertionError(f"openapi: {doc.get('openapi')!r}, want 3.1.x")
    refs = []
    _walk_refs(doc, refs)
    for ref in refs:
        _resolve(doc, ref)
    err = _resolve(doc, "#/components/schemas/Error")
    env = (err.get("properties") or {}).get("error") or {}
    if sorted(env.get("required") or []) != ["code", "message", "request_id"]:
        raise AssertionError("Error.error must require code, message, request_id")
    codes = ((env.get("properties") or {}).get("code") or {}).get("enum")
    if codes != ERROR_CODES:
        raise AssertionError(f"Error code enum {codes} differs from SPEC 5 {ERROR_CODES}")
    try:
        import yaml
    except ImportError:
        return
    diff = _first_difference(doc, _normalize(yaml.safe_load(text)))
    if diff:
        raise AssertionError(f"the line reader and PyYAML read it differently at {diff}")


def readme_config_table_current():
    out = subprocess.run([BIN, "config-table"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"{BIN} config-table exited {out.returncode}")
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    m = re.search(r"<!-- config-table:begin -->\n(.*?)<!-- config-table:end -->", readme, re.S)
    if not m:
        raise AssertionError("README.md lacks the config-table markers")
    have = m.group(1).strip().splitlines()
    want = out.stdout.strip().splitlines()
    for n, (h, w) in enumerate(zip(have, want)):
        if h != w:
            raise AssertionError(f"README table line {n + 1} is {h!r}, config-table says {w!r}"
                                 " (paste `build/reeld config-table` between the markers)")
    if len(have) != len(want):
        raise AssertionError(f"README table has {len(have)} lines, config-table {len(want)}")


if __name__ == "__main__":
    run_all(globals())
    done()
