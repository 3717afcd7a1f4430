// One complete upload with tus-js-client.
// Options (JSON argument): endpoint, token, file, chunkSize, metadata,
// source ("file" | "buffer" | "stream"), duringCreation (creation-with-
// upload), deferLength (creation-defer-length), overridePatch
// (X-HTTP-Method-Override), retryDelays.
// Prints {ok, url, bytes, ms, chunks, progress, requests[]} or
// {ok:false, error, status?, body?, requests[]}.
import { args, baseOptions, errorInfo, print, source, tus } from './common.mjs'

const o = args()
const requests = []
const input = await source(o)
let chunks = 0
let progress = 0
const t0 = process.hrtime.bigint()

await new Promise((resolve) => {
  const up = new tus.Upload(input, {
    ...baseOptions(o, requests),
    onProgress(sent) {
      progress = sent
    },
    onChunkComplete() {
      chunks++
    },
    onSuccess() {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6
      print({ ok: true, url: up.url, bytes: up._size ?? null, ms, chunks, progress, requests })
      resolve()
    },
    onError(err) {
      print({ ok: false, url: up.url, error: errorInfo(err), chunks, progress, requests })
      process.exitCode = 1
      resolve()
    },
  })
  up.start()
})
