# A tiny Jobmesh client in Ruby: fetches one job with GetJob and prints its id, topic and state.
# Uses Debian's ruby-grpc and stubs generated into build/gen (see README.md and the Makefile).
#
#   ruby -I build/gen getjob.rb HOST:PORT JOB_ID [BUNDLE_DIR]
#
# With BUNDLE_DIR (`jobmesh cluster client --scope read --out DIR`: ca.pem, client.pem,
# client.key) it speaks TLS, presenting that client certificate, whose scope `read` is its
# credential (no token needed); without, plaintext to a node run with --insecure.
# Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.

require 'grpc'
require 'jobmesh/v1/jobs_services_pb'

CALL_TIMEOUT_S = 10
# Nodes are dialed by address, so TLS checks the name every node certificate carries.
SERVER_NAME = 'node.jobmesh'

unless [2, 3].include?(ARGV.length)
  warn 'usage: getjob.rb HOST:PORT JOB_ID [BUNDLE_DIR]'
  exit 2
end
address, job_id, bundle = ARGV
if bundle
  read = ->(name) { File.read(File.join(bundle, name)) }
  credentials = GRPC::Core::ChannelCredentials.new(read.call('ca.pem'), read.call('client.key'), read.call('client.pem'))
  stub = Jobmesh::V1::JobService::Stub.new(
    address, credentials, timeout: CALL_TIMEOUT_S, channel_args: { 'grpc.ssl_target_name_override' => SERVER_NAME }
  )
else
  stub = Jobmesh::V1::JobService::Stub.new(address, :this_channel_is_insecure, timeout: CALL_TIMEOUT_S)
end
begin
  job = stub.get_job(Jobmesh::V1::GetJobRequest.new(job_id: job_id)).job
rescue GRPC::BadStatus => e
  code = GRPC::Core::StatusCodes.constants.find { |name| GRPC::Core::StatusCodes.const_get(name) == e.code }
  warn "GetJob failed: #{code}: #{e.details}"
  exit 1
end
puts [job.id, job.topic, job.state].join(' ')
