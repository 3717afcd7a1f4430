// Shared pieces of the tus-js-client scripts in this directory. Each script
// takes one JSON argument (its options), drives reeld with the real
// tus-js-client, and prints one JSON object on stdout: what happened, with
// every HTTP request the client made (method, status, Upload-Offset), so
// that the Python driver (tests/e2e/test_tus_client.py) asserts on the wire
// exchange and not only on the client's verdict.
import { createReadStream } from 'node:fs'
import { Readable } from 'node:stream'
import * as tus from 'tus-js-client'

export { tus }

export function args() {
  if (process.argv.length < 3) {
    fail('usage: node SCRIPT.mjs \'{"endpoint":..., "token":..., "file":...}\'')
  }
  try {
    return JSON.parse(process.argv[2])
  } catch (e) {
    fail(`bad JSON argument: ${e.message}`)
  }
}

export function fail(message, extra = {}) {
  process.stdout.write(JSON.stringify({ ok: false, error: message, ...extra }) + '\n')
  process.exit(1)
}

// The input tus-js-client uploads: "file" (an fs.ReadStream with a path:
// the client slices it by offset, which is what resuming needs), "buffer",
// or "stream" (a plain Readable without a size: with uploadLengthDeferred
// this is the creation-defer-length case).
export async function source(o) {
  const kind = o.source || 'file'
  if (kind === 'file') return createReadStream(o.file)
  if (kind === 'buffer') {
    const { readFile } = await import('node:fs/promises')
    return readFile(o.file)
  }
  if (kind === 'stream') {
    // Hide the path so that tus-js-client treats it as a stream of unknown
    // origin and size.
    return Readable.from(createReadStream(o.file, { highWaterMark: 256 * 1024 }))
  }
  fail(`unknown source ${kind}`)
}

// Options every script shares: Bearer auth on every request, no URL
// storage (each test states how it resumes), a log of each exchange.
export function baseOptions(o, log) {
  return {
    endpoint: o.endpoint || null,
    uploadUrl: o.uploadUrl || null,
    headers: { Authorization: `Bearer ${o.token}` },
    chunkSize: o.chunkSize || Number.POSITIVE_INFINITY,
    metadata: o.metadata || {},
    retryDelays: o.retryDelays === undefined ? null : o.retryDelays,
    storeFingerprintForResuming: false,
    removeFingerprintOnSuccess: false,
    uploadDataDuringCreation: !!o.duringCreation,
    uploadLengthDeferred: !!o.deferLength,
    overridePatchMethod: !!o.overridePatch,
    onAfterResponse(req, res) {
      log.push({
        method: req.getMethod(),
        override: req.getHeader('X-HTTP-Method-Override') || undefined,
        status: res.getStatus(),
        offset: res.getHeader('Upload-Offset') ?? null,
        expires: res.getHeader('Upload-Expires') ?? null,
        tus: res.getHeader('Tus-Resumable') ?? null,
      })
    },
  }
}

export function errorInfo(err) {
  const out = { message: String(err && err.message ? err.message : err) }
  if (err && err.originalResponse) {
    out.status = err.originalResponse.getStatus()
    out.body = err.originalResponse.getBody()
  }
  return out
}

export function print(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}
