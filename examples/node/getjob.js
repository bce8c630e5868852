// A tiny Jobmesh client in Node.js: fetches one job with GetJob and prints its id, topic and state.
//
//   node getjob.js HOST:PORT JOB_ID      (after `npm install`)
//
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.
'use strict';

const grpc = require('@grpc/grpc-js');
const { loadJobmesh } = require('./jobmesh');

const CALL_TIMEOUT_MS = 10_000;

function main(argv) {
  if (argv.length !== 2) {
    console.error('usage: getjob.js HOST:PORT JOB_ID');
    process.exit(2);
  }
  const [address, jobId] = argv;
  // The nodes in development and tests serve plaintext gRPC.
  const jobs = new (loadJobmesh().JobService)(address, grpc.credentials.createInsecure());
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
