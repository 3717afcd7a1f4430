// An upload aborted midway, then finished by a NEW tus.Upload instance that
// knows only the upload URL (as a browser does after a reload).
// Options (JSON argument): endpoint, token, file, chunkSize, metadata,
// abortAfter (bytes after which the first instance calls upload.abort()),
// rate (bytes/s at which the first instance reads the file, so that the
// abort lands in the middle of a PATCH body: tus-js-client reports
// progress at most every 100 ms, and on loopback a whole chunk goes out
// faster than that), retryDelays (of the second instance: a PATCH that the
// server still holds right after the abort may be answered 423 and
// retried). The second instance reads the file at full speed.
// Prints {ok, url, abortedAfter, acceptedBeforeAbort, resumeOffset,
// first[], second[], ms} where first/second are the requests of each
// instance; resumeOffset is the Upload-Offset of the second instance's
// HEAD.
import { createReadStream, statSync } from 'node:fs'
import { Transform } from 'node:stream'
import { args, baseOptions, errorInfo, fail, print, source, tus } from './common.mjs'

// A tus-js-client fileReader (a documented option) whose slices read the
// file at a bounded rate: pieces of 64 KiB, each held back as long as the
// rate asks.
function slowReader(rate) {
  const piece = 64 * 1024
  const delay = Math.max(1, Math.round((1000 * piece) / rate))
  return {
    openFile(path) {
      const size = statSync(path).size
      return Promise.resolve({
        size,
        slice(start, end) {
          end = Math.min(end, size)
          const paced = createReadStream(path, { start, end: end - 1, highWaterMark: piece }).pipe(
            new Transform({
              transform(chunk, _enc, cb) {
                setTimeout(() => cb(null, chunk), delay)
              },
            }),
          )
          paced.size = end - start
          return Promise.resolve({ value: paced, done: end >= size })
        },
        close() {},
      })
    },
  }
}

const o = args()
const first = []
const second = []
let accepted = 0
let abortedAfter = -1

const url = await new Promise((resolve) => {
  Promise.resolve(o.rate ? o.file : source(o)).then((input) => {
    const up = new tus.Upload(input, {
      ...baseOptions(o, first),
      ...(o.rate ? { fileReader: slowReader(o.rate) } : {}),
      onChunkComplete(_size, bytesAccepted) {
        accepted = bytesAccepted
      },
      onProgress(sent) {
        if (abortedAfter < 0 && sent >= o.abortAfter) {
          abortedAfter = sent
          // abort() stops the request in flight (the socket is destroyed)
          // and resolves once it is stopped; false: do not terminate.
          up.abort(false).then(() => resolve(up.url))
        }
      },
      onSuccess() {
        fail('the first instance finished before it could be aborted', { first })
      },
      onError(err) {
        fail('first instance failed before the abort', { detail: errorInfo(err), first })
      },
    })
    up.start()
  })
})

if (!url) fail('no upload URL after the abort', { first })

const t0 = process.hrtime.bigint()
const input2 = await source(o)
await new Promise((resolve) => {
  const up2 = new tus.Upload(input2, {
    ...baseOptions({ ...o, retryDelays: o.retryDelays ?? [200, 500, 1000, 2000] }, second),
    endpoint: null,
    uploadUrl: url,
    onSuccess() {
      const head = second.find((r) => r.method === 'HEAD')
      print({
        ok: true,
        url,
        abortedAfter,
        acceptedBeforeAbort: accepted,
        resumeOffset: head ? Number(head.offset) : null,
        ms: Number(process.hrtime.bigint() - t0) / 1e6,
        first,
        second,
      })
      resolve()
    },
    onError(err) {
      print({ ok: false, url, error: errorInfo(err), abortedAfter, acceptedBeforeAbort: accepted, first, second })
      process.exitCode = 1
      resolve()
    },
  })
  up2.start()
})
