// A tiny Jobmesh client in C++: fetches one job with GetJob and prints its id, topic and state.
// Built with the Makefile against Debian's gRPC and protobuf packages (see README.md).
//
//   build/getjob HOST:PORT JOB_ID [BUNDLE_DIR]
//
// With BUNDLE_DIR (`jobmesh cluster client --scope read --out DIR`: ca.pem, client.pem,
// client.key) it speaks TLS, presenting that client certificate, whose scope `read` is its
// credential (no token needed); without, plaintext to a node run with --insecure.
//
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.

#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <grpcpp/grpcpp.h>

#include "jobmesh/v1/jobs.grpc.pb.h"

namespace v1 = jobmesh::v1;

namespace {

constexpr auto kCallTimeout = std::chrono::seconds(10);

// The status code's name as the gRPC docs spell it (the C++ API only has the number).
const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK",        "CANCELLED",          "UNKNOWN",  "INVALID_ARGUMENT",  "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS",     "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
      "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  int index = static_cast<int>(code);
  return index >= 0 && index < 17 ? kNames[index] : "UNKNOWN";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// TLS with the bundle's CA and client certificate; nodes are dialed by address, so TLS checks
// the name every node certificate carries (node.jobmesh).
std::shared_ptr<grpc::Channel> Connect(const std::string& address, const std::string& bundle) {
  if (bundle.empty()) return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(bundle + "/ca.pem");
  tls.pem_private_key = ReadFile(bundle + "/client.key");
  tls.pem_cert_chain = ReadFile(bundle + "/client.pem");
  grpc::ChannelArguments arguments;
  arguments.SetSslTargetNameOverride("node.jobmesh");
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(tls), arguments);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::cerr << "usage: getjob HOST:PORT JOB_ID [BUNDLE_DIR]" << std::endl;
    return 2;
  }
  auto stub = v1::JobService::NewStub(Connect(argv[1], argc == 4 ? argv[3] : ""));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  v1::GetJobRequest request;
  request.set_job_id(argv[2]);
  v1::GetJobResponse response;
  grpc::Status status = stub->GetJob(&context, request, &response);
  if (!status.ok()) {
    std::cerr << "GetJob failed: " << CodeName(status.error_code()) << ": " << status.error_message()
              << std::endl;
    return 1;
  }
  const v1::Job& job = response.job();
  std::cout << job.id() << " " << job.topic() << " " << v1::JobState_Name(job.state()) << std::endl;
  return 0;
}
