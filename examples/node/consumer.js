#!/usr/bin/env node
'use strict';
// Ordo consumer: prints the history, marks when it has caught up, follows live events, stores
// its cursor and resumes after every disconnect, server restart or restart of its own.
//
//   node consumer.js [--addr 127.0.0.1:50051] [--cursor FILE] [--after N] [--count N]
//                    [--type T]... [--disconnect-after N] [--heartbeat-ms 1000]
//                    [--ca ca.pem] [--tls-domain NAME] [--cert c.pem --key c.key] [--token T]
//
// The whole resume logic is one variable: `last`, the offset of the last event processed (or the
// last heartbeat's scanned_offset). Every (re)connect subscribes with `after_offset = last`, which
// is exclusive, so nothing is skipped and nothing is seen twice. With --cursor, `last` is written
// to that file after each event is processed and read from it at start (it wins over --after).
// A crash between printing an event and writing the file means that one event comes again on
// the next run: at-least-once, never a gap.
//
// Prints one JSON object per line: {"start_after": last}, {"event": offset, "type": ...},
// {"caught_up": head} (once: every subscription sends one, only the first is news),
// {"reconnecting": status, "after": last} (the gRPC status that ended the subscription, or
// SILENT when the watchdog gave up on it) and, with --count, {"done": n, "offsets": [...]}.
// Offsets are strings (uint64). Without --count it follows the log until Ctrl-C.

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { grpc, connect, connectionOptions, statusName, emit } = require('./ordo');

const RETRYABLE = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.UNKNOWN,
  grpc.status.INTERNAL,
  grpc.status.CANCELLED,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
]);

function readCursor(file) {
  try {
    const text = fs.readFileSync(file, 'utf8').trim();
    if (!/^\d+$/.test(text)) throw new Error(`cursor file ${file} does not hold an offset`);
    return BigInt(text);
  } catch (error) {
    if (error.code === 'ENOENT') return null;
    throw error;
  }
}

/** Replaces the cursor file atomically: a crash leaves the old offset or the new one. */
function writeCursor(file, offset) {
  const temporary = `${file}.tmp`;
  fs.writeFileSync(temporary, `${offset}\n`);
  fs.renameSync(temporary, file);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  const { values: args } = parseArgs({
    options: {
      ...connectionOptions(),
      cursor: { type: 'string' },
      after: { type: 'string', default: '0' },
      count: { type: 'string' },
      type: { type: 'string', multiple: true, default: [] },
      'disconnect-after': { type: 'string', default: '0' },
      'heartbeat-ms': { type: 'string', default: '1000' },
    },
  });
  const count = args.count === undefined ? Infinity : Number(args.count);
  const disconnectAfter = Number(args['disconnect-after']);
  const heartbeatMs = Number(args['heartbeat-ms']);

  let last = BigInt(args.after);
  if (args.cursor) last = readCursor(args.cursor) ?? last;
  const save = () => args.cursor && writeCursor(args.cursor, last);
  emit({ start_after: last.toString() });

  const offsets = []; // with --count only: a live tail keeps nothing
  let received = 0;
  let caughtUp = false;
  let dropped = false;
  let stopping = false;
  let call = null;
  let delay = 100;
  process.on('SIGINT', () => {
    stopping = true; // Ctrl-C: the cursor already holds the last processed event
    if (call) call.cancel();
  });

  while (received < count && !stopping) {
    const { events, metadata, close } = connect(args);
    call = events.Subscribe(
      {
        start: { after_offset: last.toString() },
        filter: { types: args.type },
        heartbeat_interval_ms: heartbeatMs,
      },
      metadata,
    );
    // A connection that sends nothing for three heartbeat periods is dead (a server that lost
    // power sends no error): cancel it and reconnect.
    let watchdog = null;
    let silent = false;
    const feed = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        silent = true;
        call.cancel();
      }, 3 * heartbeatMs);
    };
    feed();
    let reason = null; // why this subscription ended, when it should be resumed
    try {
      for await (const response of call) {
        feed();
        delay = 100; // connected: the next outage starts with a short wait
        if (response.message === 'event') {
          const event = response.event;
          const offset = BigInt(event.offset);
          if (offset <= last) throw new Error(`duplicate event ${offset} after ${last}`);
          // Process the event (here: print it), then move the cursor past it.
          emit({ event: event.offset, type: event.type, stream_id: event.stream_id });
          last = offset;
          save();
          received += 1;
          if (count !== Infinity) offsets.push(event.offset);
          if (received >= count) break;
          if (disconnectAfter && !dropped && received === disconnectAfter) {
            dropped = true;
            reason = 'CANCELLED'; // simulate a dropped connection (cancelled below)
            break;
          }
        } else if (response.message === 'caught_up') {
          if (!caughtUp) emit({ caught_up: response.caught_up.head_offset });
          caughtUp = true;
        } else if (response.message === 'heartbeat') {
          // A filtered subscription may match nothing for a long time: the heartbeat still
          // moves the resume point forward.
          const scanned = BigInt(response.heartbeat.scanned_offset);
          if (scanned > last) {
            last = scanned;
            save();
          }
        }
      }
      // The server does not end a subscription with OK, but if it did: resubscribe.
      if (!reason && received < count) reason = 'OK';
    } catch (error) {
      if (!stopping && !RETRYABLE.has(error.code)) throw error;
      reason = silent ? 'SILENT' : statusName(error.code);
    } finally {
      clearTimeout(watchdog);
      call.cancel();
      close();
    }
    if (reason && !stopping) {
      emit({ reconnecting: reason, after: last.toString() });
      await sleep(delay);
      delay = Math.min(delay * 2, 2000);
    }
  }
  if (count !== Infinity) emit({ done: received, offsets });
}

main().catch((error) => {
  const status = error.code === undefined ? '' : `${statusName(error.code)}: `;
  process.stderr.write(`error: ${status}${error.details || error.message}\n`);
  process.exit(1);
});
