// A tiny Jobmesh client in Node.js: fetches one job with GetJob and prints its id, topic and state.
//
//   node getjob.js HOST:PORT JOB_ID [BUNDLE_DIR]      (after `npm install`)
//
// With BUNDLE_DIR (`jobmesh cluster client --scope read --out DIR`) it speaks TLS, presenting that
// client certificate, whose scope `read` is its credential; without, plaintext (--insecure node).
//
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.
'use strict';

const grpc = require('@grpc/grpc-js');
const { connection, loadJobmesh } = require('./jobmesh');

const CALL_TIMEOUT_MS = 10_000;

function main(argv) {
  if (argv.length !== 2 && argv.length !== 3) {
    console.error('usage: getjob.js HOST:PORT JOB_ID [BUNDLE_DIR]');
    process.exit(2);
  }
  const [address, jobId, bundle] = argv;
  const { credentials, channelOptions } = connection(bundle ? { bundle } : { insecure: true });
  const jobs = new (loadJobmesh().JobService)(address, credentials, channelOptions);
  const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
  jobs.GetJob({ job_id: jobId }, { deadline }, (error, response) => {
    jobs.close();
    if (error) {
      console.error(`GetJob failed: ${grpc.status[error.code]}: ${error.details}`);
      process.exit(1);
    }
    const { job } = response;
    console.log(`${job.id} ${job.topic} ${job.state}`);
  });
}

main(process.argv.slice(2));
