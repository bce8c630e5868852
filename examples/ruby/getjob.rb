# A tiny Jobmesh client in Ruby: fetches one job with GetJob and prints its id, topic and state.
# Uses Debian's ruby-grpc and stubs generated into build/gen (see README.md and the Makefile).
#
#   ruby -I build/gen getjob.rb HOST:PORT JOB_ID
#
# Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.

require 'grpc'
require 'jobmesh/v1/jobs_services_pb'

CALL_TIMEOUT_S = 10

if ARGV.length != 2
  warn 'usage: getjob.rb HOST:PORT JOB_ID'
  exit 2
end
address, job_id = ARGV
# The nodes in development and tests serve plaintext gRPC.
stub = Jobmesh::V1::JobService::Stub.new(address, :this_channel_is_insecure, timeout: CALL_TIMEOUT_S)
begin
  job = stub.get_job(Jobmesh::V1::GetJobRequest.new(job_id: job_id)).job
rescue GRPC::BadStatus => e
  code = GRPC::Core::StatusCodes.constants.find { |name| GRPC::Core::StatusCodes.const_get(name) == e.code }
  warn "GetJob failed: #{code}: #{e.details}"
  exit 1
end
puts [job.id, job.topic, job.state].join(' ')
