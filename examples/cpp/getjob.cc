// A tiny Jobmesh client in C++: fetches one job with GetJob and prints its id, topic and state.
// Built with the Makefile against Debian's gRPC and protobuf packages (see README.md).
//
//   build/getjob HOST:PORT JOB_ID
//
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.

#include <chrono>
#include <iostream>

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

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: getjob HOST:PORT JOB_ID" << std::endl;
    return 2;
  }
  // The nodes in development and tests serve plaintext gRPC.
  auto stub = v1::JobService::NewStub(grpc::CreateChannel(argv[1], grpc::InsecureChannelCredentials()));
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
