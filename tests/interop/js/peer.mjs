// Interop peer: the official @supabase/realtime-js client, remote-controlled over stdio.
//
//   node peer.mjs --url ws://127.0.0.1:PORT/realtime/v1 --apikey KEY --vsn 2.0.0|1.0.0 \
//                 --topic room --key alice [--self] [--ack] \
//                 [--heartbeat-ms N] [--timeout-ms N] [--lifetime-s N] [--pg-bindings JSON]
//
// The peer connects, joins `realtime:<topic>` (the client adds the prefix) with the given
// broadcast/presence config, listens to every broadcast, presence and system event, and then
// executes commands read from stdin, one JSON object per line, strictly in order:
//
//   {"cmd":"send","event":E,"payload":P}        -> {"type":"send_result","event":E,"result":R}
//   {"cmd":"send_binary","event":E,"hex":"0102"} -> {"type":"send_result",...}   (vsn 2.0.0 only)
//   {"cmd":"track","meta":{...}}                 -> {"type":"track_result","result":R}
//   {"cmd":"untrack"}                            -> {"type":"untrack_result","result":R}
//   {"cmd":"presence_state"}                     -> {"type":"presence_state","state":{...}}
//   {"cmd":"set_auth","token":T}                 -> client.setAuth(T); {"type":"set_auth_result"}
//   {"cmd":"ping"}                               -> {"type":"pong"}   (ordering barrier)
//   {"cmd":"quit"}                               -> unsubscribe, disconnect, {"type":"bye"}, exit 0
//
// R is what the client library itself returns: 'ok' | 'error' | 'timed out'.
// Events are printed as they happen (one JSON line each):
//
//   {"type":"hello","client":"@supabase/realtime-js","version":...,"vsn":...}
//   {"type":"status","status":"SUBSCRIBED"|"CHANNEL_ERROR"|"TIMED_OUT"|"CLOSED","error":...}
//   {"type":"broadcast","event":E,"payload":P,"binary_hex":<hex or null>,"raw":<callback arg>}
//   {"type":"presence","event":"sync"|"join"|"leave","key":...,"newPresences"|"leftPresences":...}
//   {"type":"system","payload":{...}}
//   {"type":"postgres_changes","binding":I,"payload":<callback arg>}   (see --pg-bindings)
//   {"type":"heartbeat","status":"sent"|"ok"|"error"|"timeout"}   (the library's heartbeatCallback)
//   {"type":"error","message":...}            a bad command; the peer keeps running
//   {"type":"fatal","message":...}            followed by a non-zero exit
//
// --pg-bindings takes a JSON list of postgres_changes filters, e.g.
// '[{"event":"*","schema":"public","table":"todos","filter":"id=eq.1"}]'; binding I (its index in
// the list) is registered with channel.on('postgres_changes', filter, callback) before the join,
// and each callback prints its argument (`eventType`, `new`, `old`, ...) as shown above.
//
// Safety: only loopback URLs are accepted, EOF on stdin behaves like "quit", and the process
// exits by itself (status 3) after --lifetime-s seconds (default 60) so that a broken test can
// never leave it running. Library logging goes to stderr; stdout carries protocol lines only.

import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { RealtimeClient } from '@supabase/realtime-js'
import { WebSocket } from 'ws'

const CLIENT_NAME = '@supabase/realtime-js'

// --- output -------------------------------------------------------------------------------------

// Anything the library (or a dependency) prints with console.log must not corrupt stdout.
console.log = (...args) => console.error(...args)
console.info = (...args) => console.error(...args)
console.debug = (...args) => console.error(...args)

function bufferToHex(buf) {
  return Buffer.from(buf instanceof ArrayBuffer ? new Uint8Array(buf) : buf).toString('hex')
}

function isBinary(value) {
  return (
    value instanceof ArrayBuffer ||
    value?.constructor?.name === 'ArrayBuffer' ||
    ArrayBuffer.isView(value)
  )
}

/** Deep-copy `value` into something JSON.stringify renders faithfully. */
function jsonSafe(value, seen = new WeakSet()) {
  if (value === undefined) return null
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'bigint') return value.toString()
    if (typeof value === 'function') return `[function ${value.name || 'anonymous'}]`
    return value
  }
  if (isBinary(value)) {
    const view = ArrayBuffer.isView(value)
      ? new Uint8Array(value.buffer, value.byteOffset, value.byteLength)
      : new Uint8Array(value)
    return { $binary_hex: Buffer.from(view).toString('hex') }
  }
  if (value instanceof Error) {
    return {
      name: value.name,
      message: value.message,
      cause: value.cause === undefined ? null : jsonSafe(value.cause, seen),
    }
  }
  // `seen` holds the ancestors of `value` only: shared (non-circular) references are fine.
  if (seen.has(value)) return '[circular]'
  seen.add(value)
  try {
    if (Array.isArray(value)) return value.map((item) => jsonSafe(item, seen))
    const out = {}
    for (const [k, v] of Object.entries(value)) out[k] = jsonSafe(v, seen)
    return out
  } finally {
    seen.delete(value)
  }
}

function emit(obj) {
  process.stdout.write(JSON.stringify(jsonSafe(obj)) + '\n')
}

let exiting = false

function exitWith(code) {
  if (exiting) return
  exiting = true
  // Let stdout drain before exiting (pipes may be asynchronous).
  process.stdout.write('', () => process.exit(code))
  setTimeout(() => process.exit(code), 1000).unref()
}

function fatal(message, extra = {}) {
  emit({ type: 'fatal', message, ...extra })
  exitWith(1)
}

process.on('uncaughtException', (err) => fatal(`uncaught exception: ${err?.message}`, { error: err }))
process.on('unhandledRejection', (err) =>
  fatal(`unhandled rejection: ${err?.message ?? err}`, { error: err })
)

// --- arguments ----------------------------------------------------------------------------------

function parseArgs(argv) {
  const opts = {
    url: null,
    apikey: null,
    vsn: '2.0.0',
    topic: null,
    key: '',
    self: false,
    ack: false,
    heartbeatMs: null,
    timeoutMs: null,
    lifetimeS: 60,
    pgBindings: '[]',
  }
  const valued = {
    '--url': 'url',
    '--apikey': 'apikey',
    '--vsn': 'vsn',
    '--topic': 'topic',
    '--key': 'key',
    '--heartbeat-ms': 'heartbeatMs',
    '--timeout-ms': 'timeoutMs',
    '--lifetime-s': 'lifetimeS',
    '--pg-bindings': 'pgBindings',
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--self') opts.self = true
    else if (arg === '--ack') opts.ack = true
    else if (arg in valued) {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`)
      opts[valued[arg]] = argv[++i]
    } else throw new Error(`unknown argument ${JSON.stringify(arg)}`)
  }
  for (const required of ['url', 'apikey', 'topic']) {
    if (!opts[required]) throw new Error(`--${required} is required`)
  }
  if (!['1.0.0', '2.0.0'].includes(opts.vsn)) throw new Error(`unsupported --vsn ${opts.vsn}`)
  for (const numeric of ['heartbeatMs', 'timeoutMs', 'lifetimeS']) {
    if (opts[numeric] !== null) {
      opts[numeric] = Number(opts[numeric])
      if (!Number.isFinite(opts[numeric]) || opts[numeric] <= 0) {
        throw new Error(`${numeric} must be a positive number`)
      }
    }
  }
  opts.pgBindings = JSON.parse(opts.pgBindings)
  if (!Array.isArray(opts.pgBindings) || !opts.pgBindings.every((b) => b && typeof b === 'object')) {
    throw new Error('--pg-bindings must be a JSON list of objects')
  }
  const host = new URL(opts.url).hostname
  if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host)) {
    throw new Error(`refusing non-loopback URL ${opts.url}: this peer is for local tests only`)
  }
  return opts
}

let opts
try {
  opts = parseArgs(process.argv.slice(2))
} catch (err) {
  emit({ type: 'fatal', message: `bad arguments: ${err.message}` })
  process.exit(2)
}

// Hard safety timer: never outlive a broken test.
setTimeout(() => {
  emit({ type: 'fatal', message: `lifetime of ${opts.lifetimeS} s exceeded; exiting` })
  exitWith(3)
}, opts.lifetimeS * 1000).unref()

// --- client -------------------------------------------------------------------------------------

// Node 20 has no global WebSocket, so the `ws` implementation is passed as `transport`.
const clientOptions = {
  transport: WebSocket,
  params: { apikey: opts.apikey },
  vsn: opts.vsn,
  logger: (kind, msg, data) => {
    let rendered = ''
    try {
      rendered = data === undefined ? '' : ' ' + JSON.stringify(jsonSafe(data))
    } catch {
      rendered = ' [unserialisable]'
    }
    process.stderr.write(`[realtime-js ${kind}] ${msg}${rendered}\n`)
  },
  // 'sent' when a heartbeat goes out, then 'ok'/'error' for its reply or 'timeout' if none came.
  heartbeatCallback: (status) => emit({ type: 'heartbeat', status }),
}
if (opts.heartbeatMs !== null) clientOptions.heartbeatIntervalMs = opts.heartbeatMs
if (opts.timeoutMs !== null) clientOptions.timeout = opts.timeoutMs

const client = new RealtimeClient(opts.url, clientOptions)
emit({ type: 'hello', client: CLIENT_NAME, version: readVersion(), vsn: opts.vsn, pid: process.pid })

function readVersion() {
  try {
    // Resolved relative to this file, i.e. the pinned copy in node_modules.
    const url = new URL('./node_modules/@supabase/realtime-js/package.json', import.meta.url)
    return JSON.parse(readFileSync(url, 'utf8')).version
  } catch {
    return null
  }
}

const channel = client.channel(opts.topic, {
  config: {
    broadcast: { self: opts.self, ack: opts.ack },
    presence: { key: opts.key },
  },
})

channel.on('broadcast', { event: '*' }, (message) => {
  const inner = message?.payload
  emit({
    type: 'broadcast',
    event: message?.event ?? null,
    payload: inner,
    binary_hex: isBinary(inner) ? bufferToHex(inner) : null,
    raw: message,
  })
})
channel.on('presence', { event: 'sync' }, () => emit({ type: 'presence', event: 'sync' }))
channel.on('presence', { event: 'join' }, ({ key, currentPresences, newPresences }) =>
  emit({ type: 'presence', event: 'join', key, currentPresences, newPresences })
)
channel.on('presence', { event: 'leave' }, ({ key, currentPresences, leftPresences }) =>
  emit({ type: 'presence', event: 'leave', key, currentPresences, leftPresences })
)
channel.on('system', {}, (payload) => emit({ type: 'system', payload }))
opts.pgBindings.forEach((filter, binding) => {
  channel.on('postgres_changes', filter, (payload) => emit({ type: 'postgres_changes', binding, payload }))
})

channel.subscribe((status, err) => {
  emit({ type: 'status', status, error: err ?? null })
})

// --- commands -----------------------------------------------------------------------------------

function hexToArrayBuffer(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
    throw new Error(`"hex" must be an even-length hex string, got ${JSON.stringify(hex)}`)
  }
  const bytes = Buffer.from(hex, 'hex')
  // A real ArrayBuffer (not a Node Buffer view): the serializer checks `instanceof ArrayBuffer`.
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)
}

async function quit() {
  const unsubscribe = await channel.unsubscribe()
  emit({ type: 'unsubscribe_result', result: unsubscribe })
  await client.disconnect()
  emit({ type: 'bye' })
  exitWith(0)
}

async function handle(command) {
  switch (command.cmd) {
    case 'send': {
      const result = await channel.send({
        type: 'broadcast',
        event: command.event,
        payload: command.payload,
      })
      emit({ type: 'send_result', event: command.event, result })
      return
    }
    case 'send_binary': {
      if (opts.vsn !== '2.0.0') {
        emit({ type: 'error', cmd: command.cmd, message: 'send_binary needs --vsn 2.0.0' })
        return
      }
      const result = await channel.send({
        type: 'broadcast',
        event: command.event,
        payload: hexToArrayBuffer(command.hex),
      })
      emit({ type: 'send_result', event: command.event, result })
      return
    }
    case 'track':
      emit({ type: 'track_result', result: await channel.track(command.meta ?? {}) })
      return
    case 'untrack':
      emit({ type: 'untrack_result', result: await channel.untrack() })
      return
    case 'presence_state':
      emit({ type: 'presence_state', state: channel.presenceState() })
      return
    case 'set_auth':
      // Pushes `access_token` on joined channels when the token changed (never replied to).
      await client.setAuth(command.token ?? null)
      emit({ type: 'set_auth_result', result: 'ok' })
      return
    case 'ping':
      emit({ type: 'pong' })
      return
    case 'quit':
      await quit()
      return
    default:
      emit({ type: 'error', cmd: command.cmd ?? null, message: 'unknown command' })
  }
}

// Commands run one at a time, in arrival order.
let queue = Promise.resolve()
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
lines.on('line', (line) => {
  if (!line.trim()) return
  let command
  try {
    command = JSON.parse(line)
  } catch (err) {
    emit({ type: 'error', message: `invalid JSON command: ${err.message}`, line })
    return
  }
  queue = queue.then(() =>
    handle(command).catch((err) =>
      emit({ type: 'error', cmd: command.cmd ?? null, message: err?.message ?? String(err) })
    )
  )
})
lines.on('close', () => {
  // The controlling test went away: leave politely.
  queue = queue.then(() => (exiting ? undefined : quit()))
})
