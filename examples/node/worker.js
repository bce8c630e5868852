// A Jobmesh remote worker in Node.js: connects to a node's WorkerService, registers topic
// patterns and a concurrency, runs the jobs the node sends, and reports progress, a log
// line, a property and the result. Reconnects when the stream breaks.
//
//   node worker.js --node 127.0.0.1:7710 --bundle DIR --token-file FILE --topic 'demo/**' [--topic ...]
//                  [--concurrency 2] [--name NAME]
//
// --bundle DIR: `jobmesh cluster client --out DIR`; --token/--token-file: a `work` token for the
// patterns (`jobmesh token create --scope work --topics 'demo/**'`); --insecure for a plaintext node.
//
// What a job does here (edit `processJob` for real work): `steps` steps (property, default 3)
// of `step_ms` milliseconds each (default 100), then success with the input payload
// upper-cased as output. A job with `fail_attempts=N` fails its first N attempts.
//
// Payloads of any size work with @grpc/grpc-js's default 4 MiB receive limit: the worker
// registers `chunked_payloads`, so a payload over 1 MiB arrives as `payload_chunk` messages
// just before its assignment (`PayloadPieces` joins them and checks the CRC-32s); the output
// goes back in one `result` (grpc-js sends messages of any size by default).
'use strict';

const { connection, crc32, grpc, loadJobmesh, parseArgs, plainValue } = require('./jobmesh');

const RECONNECT_DELAY_MS = 1000;

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(true), ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve(false);
    }, { once: true });
  });
}

/** The work itself. `job` has the assignment's fields plus report helpers; returns a WorkResult. */
async function processJob(job, workerName) {
  const props = job.props;
  const steps = Number(props.steps ?? 3);
  const stepMs = Number(props.step_ms ?? 100);
  const failAttempts = Number(props.fail_attempts ?? 0);
  job.progress({ total_steps: steps });
  job.log(`${workerName} started attempt ${job.attempt}`);
  job.setProperty('processed_by', { string_value: workerName });
  for (let step = 0; step < steps; step += 1) {
    if (!(await sleep(stepMs, job.stopSignal))) {
      return { outcome: 'WORK_OUTCOME_FAILED', message: `stopped at step ${step}` };
    }
    job.progress({ increment_steps: 1 });
  }
  if (job.retry_count < failAttempts) {
    // retry_delay is a google.protobuf.Duration: { seconds, nanos }.
    return {
      outcome: 'WORK_OUTCOME_FAILED',
      message: `attempt ${job.attempt} failed on purpose`,
      retry_delay: { seconds: 0, nanos: 100000000 },
    };
  }
  return {
    outcome: 'WORK_OUTCOME_SUCCEEDED',
    message: `processed by ${workerName}`,
    output_payload: Buffer.from(job.payload.toString('utf8').toUpperCase(), 'utf8'),
  };
}

/** The `payload_chunk` pieces of the assignment that follows them, checked as they come. */
class PayloadPieces {
  constructor() {
    this.key = null;
    this.parts = [];
    this.size = 0;
    this.error = null;
  }

  /** Take one piece; a damaged or misplaced one makes the assignment's payload() throw. */
  add(chunk) {
    const key = `${chunk.job_id}/${chunk.attempt}`;
    if (chunk.offset === 0) {
      this.key = key;
      this.parts = [];
      this.size = 0;
      this.error = null;
    }
    if (this.error) return;
    if (crc32(chunk.data) !== chunk.data_crc32) {
      this.error = `job ${chunk.job_id}: the payload piece at offset ${chunk.offset} is damaged`;
    } else if (this.key !== key || chunk.offset !== this.size) {
      this.error = `job ${chunk.job_id}: the payload piece at offset ${chunk.offset} is out of order`;
    } else {
      this.parts.push(chunk.data);
      this.size += chunk.data.length;
    }
  }

  /** The assignment's whole input payload, inline or joined from the pieces before it, checked. */
  payload(a) {
    let data = a.payload;
    if (a.payload_chunked) {
      const { key, error } = this;
      data = Buffer.concat(this.parts, this.size);
      this.key = null;
      this.parts = [];
      this.size = 0;
      this.error = null;
      if (key !== `${a.job_id}/${a.attempt}`) throw new Error(`job ${a.job_id}: its payload pieces did not arrive`);
      if (error) throw new Error(error);
    }
    if (data.length !== a.payload_size || crc32(data) !== a.payload_crc32) {
      throw new Error(`job ${a.job_id}: the input payload does not match its CRC-32`);
    }
    return data;
  }
}

class Worker {
  constructor(jobmesh, { node, name, topics, concurrency, credentials, channelOptions }) {
    this.client = new jobmesh.WorkerService(node, credentials, channelOptions);
    this.name = name;
    this.topics = topics;
    this.concurrency = concurrency;
    this.call = null;
    this.closing = false;
  }

  connect() {
    const call = this.client.Work();
    this.call = call;
    const running = new Map(); // "job_id/attempt" -> AbortController
    const send = (message) => {
      if (!call.writableEnded) call.write(message);
    };
    // chunked_payloads: payloads over 1 MiB come in pieces, so the default receive limit suffices.
    send({
      register: { name: this.name, topics: this.topics, concurrency: this.concurrency, chunked_payloads: true },
    });
    const pieces = new PayloadPieces();

    call.on('data', (message) => {
      if (message.kind === 'registered') {
        console.log(`registered as ${message.registered.worker_id} on ${message.registered.instance_id}`);
      } else if (message.kind === 'payload_chunk') {
        pieces.add(message.payload_chunk);
      } else if (message.kind === 'assignment') {
        let payload;
        try {
          payload = pieces.payload(message.assignment);
        } catch (error) { // damaged in transit: this attempt fails, and is retried
          const { job_id, attempt } = message.assignment;
          send({ result: { job_id, attempt, outcome: 'WORK_OUTCOME_FAILED', message: String(error.message) } });
          return;
        }
        const a = { ...message.assignment, payload };
        const key = `${a.job_id}/${a.attempt}`;
        const controller = new AbortController();
        running.set(key, controller);
        const ids = { job_id: a.job_id, attempt: a.attempt };
        const props = Object.fromEntries(Object.entries(a.properties).map(([k, v]) => [k, plainValue(v)]));
        const job = {
          ...a,
          props,
          stopSignal: controller.signal,
          progress: (fields) => send({ progress: { ...ids, ...fields } }),
          log: (text) => send({ log: { ...ids, message: text } }),
          setProperty: (name, value) => send({ property: { ...ids, name, value } }),
        };
        processJob(job, this.name)
          .catch((error) => ({ outcome: 'WORK_OUTCOME_CANCELLED', message: String(error) }))
          .then((result) => {
            running.delete(key);
            send({ result: { ...ids, ...result } });
          });
      } else if (message.kind === 'stop') {
        const controller = running.get(`${message.stop.job_id}/${message.stop.attempt}`);
        if (controller) controller.abort();
      }
    });

    let ended = false;
    const onEnd = (error) => {
      if (ended) return;
      ended = true;
      for (const controller of running.values()) controller.abort();
      if (this.closing) return;
      const fatal = [grpc.status.INVALID_ARGUMENT, grpc.status.UNAUTHENTICATED, grpc.status.PERMISSION_DENIED];
      if (error && fatal.includes(error.code)) {
        console.error(`the node rejected this worker: ${error.details}`);
        process.exit(2);
      }
      console.error(`stream ended (${error ? error.details || error.message : 'closed by the node'}); reconnecting`);
      setTimeout(() => this.connect(), RECONNECT_DELAY_MS);
    };
    call.on('error', onEnd);
    call.on('end', () => onEnd(null));
  }

  close() {
    this.closing = true;
    if (this.call) this.call.end();
    this.client.close();
  }
}

function main() {
  const { options } = parseArgs(process.argv.slice(2), {
    node: '127.0.0.1:7710',
    name: 'node-worker',
    concurrency: '2',
  }, ['topic']);
  const worker = new Worker(loadJobmesh(), {
    node: options.node,
    name: options.name,
    topics: options.topic || ['demo/**'],
    concurrency: Number(options.concurrency),
    ...connection(options),
  });
  worker.connect();
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => {
      worker.close();
      process.exit(0);
    });
  }
}

main();
