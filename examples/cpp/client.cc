// A Jobmesh client in C++: adds one job and waits for it to finish, then prints the job as
// JSON. Built against Debian's gRPC packages (see README.md and the Makefile).
//
//   build/jobmesh-client [--node HOST:PORT] --bundle DIR --token-file FILE [--payload-text TEXT]
//                        [--timeout S] TOPIC [NAME=VALUE ...]
//
// --bundle DIR: `jobmesh cluster client --out DIR` (ca.pem, client.pem, client.key: the cluster
// CA and a client certificate); --token TOKEN or --token-file FILE: a bearer token with scope
// `submit` (`jobmesh token create`); --insecure instead, for a node run with --insecure.
//
// Exit code 0 when the job SUCCEEDED, 1 when it ended otherwise, 2 on errors and timeouts.

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "jobmesh/v1/jobs.grpc.pb.h"

namespace v1 = jobmesh::v1;
using Clock = std::chrono::system_clock;

namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(50);
constexpr auto kCallTimeout = std::chrono::seconds(10);
// The DNS name every node certificate carries; nodes are dialed by address, so TLS checks this.
constexpr const char* kServerName = "node.jobmesh";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Trimmed(std::string text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

// TLS with the bundle's CA and client certificate, the token sent as `authorization: Bearer`
// on every call; plaintext when `insecure`.
std::shared_ptr<grpc::Channel> Connect(const std::string& node, const std::string& bundle,
                                       const std::string& token, bool insecure) {
  if (insecure) return grpc::CreateChannel(node, grpc::InsecureChannelCredentials());
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = ReadFile(bundle + "/ca.pem");
  tls.pem_private_key = ReadFile(bundle + "/client.key");
  tls.pem_cert_chain = ReadFile(bundle + "/client.pem");
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::SslCredentials(tls);
  if (!token.empty()) {
    credentials = grpc::CompositeChannelCredentials(credentials, grpc::AccessTokenCredentials(token));
  }
  grpc::ChannelArguments arguments;
  arguments.SetSslTargetNameOverride(kServerName);
  return grpc::CreateCustomChannel(node, credentials, arguments);
}

// "42" -> int, "1.5" -> double, "true"/"false" -> bool, anything else -> string.
v1::PropertyValue ParseValue(const std::string& text) {
  v1::PropertyValue value;
  if (text == "true" || text == "false") {
    value.set_bool_value(text == "true");
    return value;
  }
  char* end = nullptr;
  long long integer = std::strtoll(text.c_str(), &end, 10);
  if (!text.empty() && *end == '\0') {
    value.set_int_value(integer);
    return value;
  }
  double number = std::strtod(text.c_str(), &end);
  if (!text.empty() && *end == '\0') {
    value.set_double_value(number);
    return value;
  }
  value.set_string_value(text);
  return value;
}

bool IsFinished(v1::JobState state) {
  return state != v1::JOB_STATE_QUEUED && state != v1::JOB_STATE_ACTIVE &&
         state != v1::JOB_STATE_UNSPECIFIED;
}

int Fail(const std::string& what, const grpc::Status& status) {
  std::cerr << what << " failed: code " << status.error_code() << ": " << status.error_message()
            << std::endl;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string node = "127.0.0.1:7710";
  std::string payload, bundle, token, token_file;
  bool insecure = false;
  double timeout_s = 60;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--insecure") {
      insecure = true;
    } else if ((arg == "--node" || arg == "--payload-text" || arg == "--timeout" || arg == "--bundle" ||
                arg == "--token" || arg == "--token-file") &&
               i + 1 < argc) {
      std::string value = argv[++i];
      if (arg == "--node") node = value;
      else if (arg == "--payload-text") payload = value;
      else if (arg == "--bundle") bundle = value;
      else if (arg == "--token") token = value;
      else if (arg == "--token-file") token_file = value;
      else timeout_s = std::atof(value.c_str());
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.empty() || (bundle.empty() && !insecure)) {
    std::cerr << "usage: jobmesh-client [--node HOST:PORT] (--bundle DIR [--token T | --token-file F] | "
                 "--insecure) [--payload-text TEXT] [--timeout S] TOPIC [NAME=VALUE ...]"
              << std::endl;
    return 2;
  }

  std::shared_ptr<grpc::Channel> channel;
  try {
    if (token.empty() && !token_file.empty()) token = Trimmed(ReadFile(token_file));
    channel = Connect(node, bundle, token, insecure);
  } catch (const std::exception& e) {
    std::cerr << e.what() << std::endl;
    return 2;
  }
  auto stub = v1::JobService::NewStub(channel);

  // Add the job: it is committed to the node's journal when AddJob returns.
  v1::AddJobRequest add;
  v1::NewJob* job = add.mutable_job();
  job->set_topic(positional[0]);
  job->set_payload(payload);
  for (size_t i = 1; i < positional.size(); ++i) {
    const std::string& item = positional[i];
    size_t at = item.find('=');
    if (at == std::string::npos) {
      std::cerr << "property " << item << " is not NAME=VALUE" << std::endl;
      return 2;
    }
    (*job->mutable_properties())[item.substr(0, at)] = ParseValue(item.substr(at + 1));
  }
  v1::AddJobResponse added;
  {
    grpc::ClientContext context;
    context.set_deadline(Clock::now() + kCallTimeout);
    grpc::Status status = stub->AddJob(&context, add, &added);
    if (!status.ok()) return Fail("AddJob", status);
  }
  const std::string id = added.job().id();
  std::cerr << "added " << id << " (" << added.job().topic() << ")" << std::endl;

  // Wait for it by polling GetJob (WatchJobs streams the same changes as events).
  const auto deadline = Clock::now() + std::chrono::milliseconds(static_cast<long>(timeout_s * 1000));
  v1::GetJobRequest get;
  get.set_job_id(id);
  get.set_include_payloads(true);
  get.set_include_log(true);
  v1::GetJobResponse current;
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(Clock::now() + kCallTimeout);
    grpc::Status status = stub->GetJob(&context, get, &current);
    if (!status.ok()) return Fail("GetJob", status);
    if (IsFinished(current.job().state())) break;
    if (Clock::now() >= deadline) {
      std::cerr << "job " << id << " did not finish within " << timeout_s << "s" << std::endl;
      return 2;
    }
    std::this_thread::sleep_for(kPollInterval);
  }

  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(current.job(), &json, options).ok()) {
    std::cerr << "cannot print the job as JSON" << std::endl;
    return 2;
  }
  std::cout << json << std::endl;
  return current.job().state() == v1::JOB_STATE_SUCCEEDED ? 0 : 1;
}
