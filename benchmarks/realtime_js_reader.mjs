// Benchmark reader: the official @supabase/realtime-js client under Node (+ the `ws` transport).
//
//   node benchmarks/realtime_js_reader.mjs --modules tests/interop/js --task throughput|rtt \
//        --url ws://127.0.0.1:PORT/realtime/v1 --vsn 1.0.0|2.0.0 --size 100 \
//        --warmup 0.3 --duration 1.0 [--rates 100,1000] [--lifetime-s 60]
//   node benchmarks/realtime_js_reader.mjs --modules tests/interop/js --task postgres \
//        --url ws://127.0.0.1:PORT/realtime/v1 --vsn 2.0.0 --table T --expect N [--idle 2]
//
// The same measurement protocol and JSON output line as benchmarks/_reader.py:
// throughput counts broadcast callbacks, reading the clock every CHECK_EVERY messages, and
// measures `duration` seconds after a `warmup` from the first broadcast; rtt sends self-broadcasts
// at fixed rates and times each from just before its send to its callback
// (performance.now(), one process). postgres (scenario 7, benchmarks/s7_postgres.py) joins a channel
// with an INSERT binding on public.T, prints {"type":"ready"} once SUBSCRIBED and "Subscribed to
// PostgreSQL" were both seen, then records each change's row id and arrival time
// (process.hrtime.bigint(): CLOCK_MONOTONIC, the clock the Python side uses) until --expect
// changes arrived or none came for --idle seconds. Loopback URLs only; exits by itself after
// --lifetime-s.

import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import path from 'node:path'

const CHECK_EVERY = 64
const API_KEY = 'bench'
const EVENT = 'bench'

function parseArgs(argv) {
  const opts = {
    modules: 'tests/interop/js',
    task: 'throughput',
    url: null,
    vsn: '1.0.0',
    size: 100,
    warmup: 0.3,
    duration: 1.0,
    rates: '100,1000',
    lifetimeS: 60,
    table: 'bench_changes',
    expect: 0,
    idle: 2,
  }
  const names = {
    '--modules': 'modules',
    '--task': 'task',
    '--url': 'url',
    '--vsn': 'vsn',
    '--size': 'size',
    '--warmup': 'warmup',
    '--duration': 'duration',
    '--rates': 'rates',
    '--lifetime-s': 'lifetimeS',
    '--table': 'table',
    '--expect': 'expect',
    '--idle': 'idle',
  }
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]]
    if (!key || i + 1 >= argv.length) throw new Error(`bad argument ${argv[i]}`)
    opts[key] = argv[i + 1]
  }
  for (const k of ['size', 'warmup', 'duration', 'lifetimeS', 'expect', 'idle']) opts[k] = Number(opts[k])
  opts.rates = opts.rates.split(',').filter(Boolean).map(Number)
  const host = new URL(opts.url).hostname
  if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host)) {
    throw new Error(`refusing non-loopback URL ${opts.url}`)
  }
  return opts
}

function finish(result) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0))
}

const opts = parseArgs(process.argv.slice(2))
setTimeout(() => {
  process.stderr.write(`lifetime of ${opts.lifetimeS} s exceeded\n`)
  process.exit(3)
}, opts.lifetimeS * 1000).unref()

const modules = path.resolve(opts.modules)
const require = createRequire(path.join(modules, 'package.json'))
const { RealtimeClient } = require('@supabase/realtime-js')
const { WebSocket } = require('ws')
const version = JSON.parse(
  readFileSync(path.join(modules, 'node_modules/@supabase/realtime-js/package.json'), 'utf8')
).version

const client = new RealtimeClient(opts.url, {
  transport: WebSocket,
  params: { apikey: API_KEY, size: String(opts.size) },
  vsn: opts.vsn,
  logger: () => {},
})

function payload(size, index) {
  // Same shape as benchmarks/_frames.py (content differs: only the size matters here).
  const head = JSON.stringify({ i: index, data: '' }).length
  return { i: index, data: 'x'.repeat(Math.max(0, size - head)) }
}

function percentiles(sorted) {
  if (sorted.length === 0) return { p50_ms: null, p90_ms: null, p99_ms: null, max_ms: null }
  const rank = (p) => {
    const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
    return sorted[index]
  }
  return { p50_ms: rank(50), p90_ms: rank(90), p99_ms: rank(99), max_ms: sorted[sorted.length - 1] }
}

if (opts.task === 'throughput') {
  let count = 0
  let nextCheck = 1
  let tFirst = null
  let started = false
  let t0 = 0
  let n0 = 0
  const channel = client.channel('bench', { config: { broadcast: { self: false, ack: false } } })
  channel.on('broadcast', { event: EVENT }, () => {
    count += 1
    if (count < nextCheck) return
    nextCheck = count + CHECK_EVERY
    const now = performance.now() / 1000
    if (tFirst === null) tFirst = now
    else if (!started) {
      if (now - tFirst >= opts.warmup) {
        started = true
        t0 = now
        n0 = count
      }
    } else if (now - t0 >= opts.duration) {
      nextCheck = Infinity
      const seconds = now - t0
      finish({
        kind: 'realtime_js',
        status: 'ok',
        version,
        messages: count - n0,
        seconds,
        rate: (count - n0) / seconds,
      })
    }
  })
  channel.subscribe()
} else if (opts.task === 'postgres') {
  const ids = []
  const recvNs = []
  let last = null
  let finished = false
  const done = () => {
    if (finished) return
    finished = true
    finish({ kind: 'realtime_js', status: 'ok', version, vsn: opts.vsn, ids, recv_ns: recvNs })
  }
  const channel = client.channel(`pg-bench-${process.pid}`)
  channel.on('postgres_changes', { event: 'INSERT', schema: 'public', table: opts.table }, (payload) => {
    recvNs.push(Number(process.hrtime.bigint()))
    ids.push(payload.new.id)
    last = performance.now()
    if (ids.length >= opts.expect) done()
  })
  let subscribed = false
  let systemOk = false
  let ready = false
  const maybeReady = () => {
    if (subscribed && systemOk && !ready) {
      ready = true
      process.stdout.write(JSON.stringify({ type: 'ready' }) + '\n')
    }
  }
  channel.on('system', {}, (payload) => {
    if (payload.extension === 'postgres_changes' && payload.status === 'ok') {
      systemOk = true
      maybeReady()
    }
  })
  channel.subscribe((status, err) => {
    if (status === 'SUBSCRIBED') {
      subscribed = true
      maybeReady()
    } else if (status === 'CHANNEL_ERROR' || status === 'TIMED_OUT') {
      finished = true
      finish({ kind: 'realtime_js', status: 'error', reason: `${status}: ${err ?? ''}` })
    }
  })
  setInterval(() => {
    if (last !== null && performance.now() - last > opts.idle * 1000) done()
  }, 100)
} else {
  const channel = client.channel(`rtt-${process.pid}`, {
    config: { broadcast: { self: true, ack: false } },
  })
  let log = null
  channel.on('broadcast', { event: EVENT }, (message) => {
    const now = performance.now()
    const seq = message.payload.i
    log.received += 1
    if (seq >= log.skip && seq < log.total) log.rtts.push(now - log.sent[seq])
  })
  channel.subscribe(async (status) => {
    if (status !== 'SUBSCRIBED') return
    const results = []
    for (const rate of opts.rates) {
      const total = Math.max(1, Math.round(rate * (opts.warmup + opts.duration)))
      log = { total, skip: Math.round(rate * opts.warmup), sent: new Array(total), rtts: [], received: 0 }
      let late = 0
      const start = performance.now()
      for (let seq = 0; seq < total; seq++) {
        const due = start + (seq * 1000) / rate
        const now = performance.now()
        if (now < due) await new Promise((resolve) => setTimeout(resolve, due - now))
        else if (now - due > 1000 / rate) late += 1
        log.sent[seq] = performance.now()
        channel.send({ type: 'broadcast', event: EVENT, payload: payload(opts.size, seq) })
      }
      const deadline = performance.now() + 2000
      while (log.received < total && performance.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 5))
      }
      const rtts = log.rtts.sort((a, b) => a - b)
      results.push({ rate, samples: rtts.length, lost: total - log.skip - rtts.length, late_sends: late, ...percentiles(rtts), rtts_us: rtts.map((ms) => Math.round(ms * 1000)) })
    }
    finish({ kind: 'realtime_js', status: 'ok', version, vsn: opts.vsn, rates: results })
  })
}
