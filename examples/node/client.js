// A Jobmesh client in Node.js: adds one job, follows its events with WatchJobs until it
// finishes, and prints the finished job as JSON.
//
//   node client.js --node 127.0.0.1:7710 --bundle DIR --token-file FILE [--payload-text TEXT]
//                  [--payload-file FILE] [--output-file FILE [--input-file FILE]] [--timeout S]
//                  TOPIC [NAME=VALUE ...]
//
// Payloads of any size work with @grpc/grpc-js's defaults: AddJob sends one message of any
// size (the node takes up to its jobs.max_payload_bytes), and GetJob inlines payloads only up
// to 1 MiB; larger ones come with the streaming GetPayload in 1 MiB pieces. --output-file
// writes the output payload to FILE (--input-file the input payload, as read back from the
// node) and prints the job without its payloads.
//
// --bundle DIR: `jobmesh cluster client --out DIR` (the cluster CA and a client certificate);
// --token TOKEN or --token-file FILE: a `submit` token (`jobmesh token create --scope submit`);
// --insecure instead, for a node run with --insecure.
//
// Exit code 0 when the job SUCCEEDED, 1 when it ended otherwise, 2 on errors and timeouts.
'use strict';

const fs = require('node:fs');
const { connection, getPayload, grpc, loadJobmesh, parseArgs, propertyValue, toJson } = require('./jobmesh');

const TERMINAL_EVENTS = new Set([
  'JOB_EVENT_TYPE_FINISHED',
  'JOB_EVENT_TYPE_CANCELLED',
  'JOB_EVENT_TYPE_STOPPED',
  'JOB_EVENT_TYPE_REMOVED',
]);

function unary(client, method, request, timeoutS = 10) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutS * 1000);
    client[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

/** The newest event sequence number: watching from it after adding the job misses nothing. */
function headSeq(client) {
  return new Promise((resolve, reject) => {
    const call = client.WatchJobs({ after_seq: -1, job_ids: ['-'] });
    call.once('data', (response) => {
      resolve(response.head_seq);
      call.cancel();
    });
    call.on('error', (error) => {
      if (error.code !== grpc.status.CANCELLED) reject(error);
    });
  });
}

/** Resolve when a terminal event of `jobId` after `afterSeq` arrives. */
function waitForEnd(client, jobId, afterSeq, timeoutS) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutS * 1000);
    const call = client.WatchJobs({ after_seq: afterSeq, job_ids: [jobId] }, { deadline });
    let done = false;
    call.on('data', (response) => {
      for (const event of response.events) {
        const kind = event.type.replace('JOB_EVENT_TYPE_', '');
        const steps = event.progress && event.progress.total_steps
          ? `${event.progress.completed_steps}/${event.progress.total_steps} `
          : '';
        process.stderr.write(`  ${kind.padEnd(9)} ${steps}${event.message}\n`);
        if (TERMINAL_EVENTS.has(event.type) && !done) {
          done = true;
          call.cancel();
          resolve(event);
        }
      }
    });
    call.on('error', (error) => {
      if (!done) reject(error);
    });
    call.on('end', () => {
      if (!done) reject(new Error('the node closed the event stream'));
    });
  });
}

async function main() {
  const { options, positional } = parseArgs(process.argv.slice(2), {
    node: '127.0.0.1:7710',
    'payload-text': '',
    timeout: '60',
  });
  const [topic, ...assignments] = positional;
  if (!topic) throw new Error('usage: node client.js [--node HOST:PORT] TOPIC [NAME=VALUE ...]');
  const properties = {};
  for (const item of assignments) {
    const at = item.indexOf('=');
    properties[item.slice(0, at)] = propertyValue(item.slice(at + 1));
  }

  const jobmesh = loadJobmesh();
  const { credentials, channelOptions } = connection(options);
  const client = new jobmesh.JobService(options.node, credentials, channelOptions);
  const started = Date.now();
  const after = await headSeq(client);
  const payload = options['payload-file']
    ? fs.readFileSync(options['payload-file'])
    : Buffer.from(options['payload-text'], 'utf8');
  const { job } = await unary(client, 'AddJob', { job: { topic, properties, payload } }, 60);
  process.stderr.write(`added ${job.id} (${job.topic})\n`);
  await waitForEnd(client, job.id, after, Number(options.timeout));
  const finished = (await unary(client, 'GetJob', { job_id: job.id, include_payloads: true, include_log: true })).job;
  if (finished.payload_omitted) finished.payload = await getPayload(client, job.id, 'PAYLOAD_KIND_INPUT');
  if (finished.output_payload_omitted) {
    finished.output_payload = await getPayload(client, job.id, 'PAYLOAD_KIND_OUTPUT');
  }
  if (options['output-file']) {
    fs.writeFileSync(options['output-file'], finished.output_payload);
    if (options['input-file']) fs.writeFileSync(options['input-file'], finished.payload);
    delete finished.payload;
    delete finished.output_payload;
  }
  process.stderr.write(`finished in ${((Date.now() - started) / 1000).toFixed(2)}s\n`);
  process.stdout.write(`${JSON.stringify(toJson(finished), null, 2)}\n`);
  client.close();
  return finished.state === 'JOB_STATE_SUCCEEDED' ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`error: ${error.details || error.message}\n`);
    process.exit(2);
  },
);
