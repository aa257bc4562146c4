#!/usr/bin/env node
'use strict';
// Ordo producer: creates an order, moves it along, and publishes a few events of its own.
//
//   node producer.js [--addr 127.0.0.1:50051] [--events 3] [--stream node-demo]
//                    [--ca ca.pem] [--tls-domain NAME] [--cert c.pem --key c.key] [--token T]
//
// Prints one JSON object per line: what it did and at which log offset (offsets are strings:
// they are uint64).

const crypto = require('node:crypto');
const { parseArgs } = require('node:util');
const { connect, connectionOptions, unary, statusName, emit } = require('./ordo');

async function main() {
  const { values: args } = parseArgs({
    options: {
      ...connectionOptions(),
      events: { type: 'string', default: '3' },
      stream: { type: 'string', default: 'node-demo' },
    },
  });
  const { orders, events, metadata, close } = connect(args);
  try {
    // An idempotency key makes the create safe to retry after a timeout.
    const created = (
      await unary(
        orders,
        'CreateOrder',
        {
          customer_id: 'node-customer',
          items: [{ sku: 'tea', quantity: 2, unit_price: { amount_minor: 450, currency: 'EUR' } }],
          idempotency_key: `node-${crypto.randomUUID()}`,
        },
        metadata,
      )
    ).order;
    emit({ order_created: created.id, offset: created.last_offset });

    const paid = (
      await unary(
        orders,
        'UpdateOrderStatus',
        {
          order_id: created.id,
          status: 'ORDER_STATUS_PAID',
          expected_version: created.version,
        },
        metadata,
      )
    ).order;
    emit({ order_paid: paid.id, offset: paid.last_offset, status: paid.status });

    // Client-chosen event ids: a retried Publish is deduplicated, never stored twice.
    const batch = [];
    for (let n = 0; n < Number(args.events); n++) {
      batch.push({
        stream_id: args.stream,
        type: 'demo.tick',
        id: crypto.randomUUID(),
        datacontenttype: 'application/json',
        data: Buffer.from(JSON.stringify({ n })),
      });
    }
    const published = await unary(events, 'Publish', { events: batch }, metadata);
    for (const position of published.positions) {
      emit({ published: position.id, offset: position.offset });
    }

    // Read the order's creation back from the log.
    const page = await unary(
      events,
      'ReadEvents',
      { start: { from_offset: created.last_offset }, limit: 1 },
      metadata,
    );
    const first = page.events[0];
    emit({ read: first.type, offset: first.offset, customer: first.order.created.customer_id });
  } finally {
    close();
  }
}

main().catch((error) => {
  const status = error.code === undefined ? '' : `${statusName(error.code)}: `;
  process.stderr.write(`error: ${status}${error.details || error.message}\n`);
  process.exit(1);
});
