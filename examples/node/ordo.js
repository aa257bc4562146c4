'use strict';
// What producer.js and consumer.js share: the contract loaded from proto/ at run time (no
// generated code), the connection flags, and the clients.

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = process.env.ORDO_PROTO_DIR || path.join(__dirname, '..', '..', 'proto');

// How proto-loader maps protobuf to JavaScript objects. These choices are part of the example:
const LOADER_OPTIONS = {
  // Field names exactly as in the .proto files (`after_offset`, `caught_up`), as in Python.
  keepCase: true,
  // uint64 offsets and versions as decimal strings: exact beyond 2^53, where a Number is not.
  // Compare them with BigInt; send them back as strings.
  longs: String,
  // Enum values by name (`ORDER_STATUS_PAID`), not number.
  enums: String,
  // Unset scalar fields read as their zero value instead of being absent.
  defaults: true,
  // Each oneof gets a virtual field naming the member that is set, e.g. a SubscribeResponse has
  // `message: 'event' | 'caught_up' | 'heartbeat'`.
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

/** The `ordo.v1` package: service constructors and message types. */
function load() {
  const definition = protoLoader.loadSync(
    ['ordo/v1/orders.proto', 'ordo/v1/events.proto'],
    LOADER_OPTIONS,
  );
  return grpc.loadPackageDefinition(definition).ordo.v1;
}

/** Command-line options for the connection, for util.parseArgs; each has an env var. */
function connectionOptions() {
  const options = {
    // host:port; an https:// prefix (or --ca, or --cert) means TLS.
    addr: { type: 'string', default: process.env.ORDO_ADDR || '127.0.0.1:50051' },
    // PEM file of the CA that signed the server's certificate. Without it, TLS uses the system's
    // trust store.
    ca: { type: 'string' },
    // The name to check the server's certificate against when it differs from the address.
    'tls-domain': { type: 'string' },
    // PEM client certificate and key, for a server that requires mutual TLS.
    cert: { type: 'string' },
    key: { type: 'string' },
    // Sent as `authorization: Bearer <token>` on every call.
    token: { type: 'string' },
  };
  const env = {
    ca: 'ORDO_CA_CERT',
    'tls-domain': 'ORDO_TLS_DOMAIN',
    cert: 'ORDO_CLIENT_CERT',
    key: 'ORDO_CLIENT_KEY',
    token: 'ORDO_TOKEN',
  };
  for (const [name, variable] of Object.entries(env)) {
    if (process.env[variable]) options[name].default = process.env[variable];
  }
  return options;
}

/**
 * Opens a channel with the given options (as parsed from connectionOptions()) and returns
 * `{ orders, events, metadata, close }`. Pass `metadata` to every call: it carries the token.
 */
function connect(options) {
  const ordo = load();
  let target = options.addr;
  let tls = Boolean(options.ca || options.cert);
  const scheme = /^(https?):\/\/([^/]+)\/?$/.exec(target);
  if (scheme) {
    tls = tls || scheme[1] === 'https';
    target = scheme[2];
  }
  const channelOptions = {};
  let credentials;
  if (tls) {
    const read = (file) => (file ? fs.readFileSync(file) : null);
    if (Boolean(options.cert) !== Boolean(options.key)) {
      throw new Error('--cert and --key go together (mutual TLS)');
    }
    credentials = grpc.credentials.createSsl(
      read(options.ca),
      read(options.key),
      read(options.cert),
    );
    if (options['tls-domain']) {
      channelOptions['grpc.ssl_target_name_override'] = options['tls-domain'];
      channelOptions['grpc.default_authority'] = options['tls-domain'];
    }
  } else {
    credentials = grpc.credentials.createInsecure();
  }
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set('authorization', `Bearer ${options.token}`);
  const orders = new ordo.OrderService(target, credentials, channelOptions);
  // Both clients share one channel (one HTTP/2 connection).
  const events = new ordo.EventService(target, credentials, {
    ...channelOptions,
    channelOverride: orders.getChannel(),
  });
  return { orders, events, metadata, close: () => orders.close() };
}

/** Calls a unary RPC and returns a promise of its response. */
function unary(client, method, request, metadata, timeoutMs = 10000) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutMs);
    client[method](request, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** The name of a gRPC status code, e.g. 'UNAVAILABLE'. */
function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

/** Prints one JSON object per line. */
function emit(object) {
  process.stdout.write(`${JSON.stringify(object)}\n`);
}

module.exports = { grpc, load, connectionOptions, connect, unary, statusName, emit };
