// Loads the Jobmesh protos from protos/ at run time (no generated code needed) and
// offers a few helpers shared by client.js and worker.js.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['jobs.proto', 'queues.proto', 'schedules.proto', 'workers.proto'].map(
  (name) => `jobmesh/v1/${name}`,
);

// The TypeScript types of `scripts/gen-stubs node` assume these options (their loader-options.ts).
// keepCase: fields keep their proto names (job_id, not jobId), as in every other language.
// longs: Number is exact up to 2^53, plenty for sequence numbers and progress steps.
// oneofs: a message with a oneof tells which field is set (`kind`).
const LOADER_OPTIONS = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

/** The `jobmesh.v1` package: service constructors and message types. */
function loadJobmesh() {
  const definition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
  return grpc.loadPackageDefinition(definition).jobmesh.v1;
}

// Options without a value.
const FLAGS = new Set(['insecure']);

/** Parse `--name value` options (repeatable ones collect into arrays), `--insecure`, and positionals. */
function parseArgs(argv, defaults, repeatable = []) {
  const options = { ...defaults };
  const positional = [];
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg.startsWith('--') && FLAGS.has(arg.slice(2))) {
      options[arg.slice(2)] = true;
    } else if (arg.startsWith('--')) {
      const name = arg.slice(2);
      const value = argv[i + 1];
      if (value === undefined) throw new Error(`${arg} needs a value`);
      i += 1;
      if (repeatable.includes(name)) {
        options[name] = [...(options[name] || []), value];
      } else {
        options[name] = value;
      }
    } else {
      positional.push(arg);
    }
  }
  return { options, positional };
}

/** A PropertyValue from command-line text: 42 -> int, 1.5 -> double, true/false -> bool, else string. */
function propertyValue(text) {
  if (text === 'true' || text === 'false') return { bool_value: text === 'true' };
  if (/^-?\d+$/.test(text)) return { int_value: Number(text) };
  if (/^-?\d*\.\d+$/.test(text)) return { double_value: Number(text) };
  return { string_value: text };
}

/** The plain value of a received PropertyValue (scalars only; lists as arrays). */
function plainValue(value) {
  if (!value || !value.kind) return undefined;
  if (value.kind === 'list_value') return value.list_value.values.map(plainValue);
  return value[value.kind];
}

/** A JSON-friendly copy of a received message: Buffers become base64 strings. */
function toJson(message) {
  if (Buffer.isBuffer(message)) return message.toString('base64');
  if (Array.isArray(message)) return message.map(toJson);
  if (message && typeof message === 'object') {
    return Object.fromEntries(Object.entries(message).map(([k, v]) => [k, toJson(v)]));
  }
  return message;
}

// CRC-32 (zlib's, the one the protos name) of a Buffer; zlib.crc32 exists from Node.js 20.15 / 22.2.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buffer) {
  const zlib = require('node:zlib');
  if (typeof zlib.crc32 === 'function') return zlib.crc32(buffer) >>> 0;
  let c = 0xffffffff;
  for (let i = 0; i < buffer.length; i += 1) c = CRC_TABLE[(c ^ buffer[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * A payload of any size with the streaming GetPayload (`kind`: 'PAYLOAD_KIND_INPUT' or
 * 'PAYLOAD_KIND_OUTPUT'): pieces of at most 1 MiB, each checked, then the whole CRC-32.
 */
function getPayload(client, jobId, kind, timeoutS = 60) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutS * 1000);
    const call = client.GetPayload({ job_id: jobId, kind }, { deadline });
    const parts = [];
    let size = 0;
    let whole = 0;
    call.on('data', (piece) => {
      if (piece.offset !== size || crc32(piece.data) !== piece.data_crc32) {
        call.cancel();
        reject(new Error(`job ${jobId}: a damaged or misplaced payload piece at offset ${piece.offset}`));
        return;
      }
      parts.push(piece.data);
      size += piece.data.length;
      whole = piece.payload_crc32;
    });
    call.on('error', reject);
    call.on('end', () => {
      const data = Buffer.concat(parts, size);
      if (crc32(data) !== whole) reject(new Error(`job ${jobId}: the payload does not match its CRC-32`));
      else resolve(data);
    });
  });
}

// The DNS name every node certificate carries; nodes are dialed by address, so TLS checks this.
const SERVER_NAME = 'node.jobmesh';

/**
 * Channel credentials and options from the parsed options: TLS with the cluster CA and the
 * client certificate of `--bundle DIR` (from `jobmesh cluster client --out DIR`), plus the
 * bearer token of `--token` or `--token-file` on every call; plaintext with `--insecure`.
 */
function connection(options) {
  if (options.insecure) return { credentials: grpc.credentials.createInsecure(), channelOptions: {} };
  if (!options.bundle) throw new Error('give --bundle DIR (from `jobmesh cluster client --out DIR`), or --insecure');
  const read = (name) => fs.readFileSync(path.join(options.bundle, name));
  let credentials = grpc.credentials.createSsl(read('ca.pem'), read('client.key'), read('client.pem'));
  const token = options.token || (options['token-file'] ? fs.readFileSync(options['token-file'], 'utf8').trim() : '');
  if (token) {
    const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
      const metadata = new grpc.Metadata();
      metadata.add('authorization', `Bearer ${token}`);
      callback(null, metadata);
    });
    credentials = grpc.credentials.combineChannelCredentials(credentials, bearer);
  }
  return { credentials, channelOptions: { 'grpc.ssl_target_name_override': SERVER_NAME } };
}

module.exports = {
  grpc,
  LOADER_OPTIONS,
  connection,
  crc32,
  getPayload,
  loadJobmesh,
  parseArgs,
  plainValue,
  propertyValue,
  toJson,
};
