// A tiny Jobmesh client in Java: fetches one job with GetJob and prints its id, topic and state.
// Built against Debian's grpc-java and protobuf-java jars (see README.md and the Makefile).
//
//   java -cp build/classes:$(make -s classpath) GetJob HOST:PORT JOB_ID
//
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.jobmesh.v1.GetJobRequest;
import io.jobmesh.v1.Job;
import io.jobmesh.v1.JobServiceGrpc;
import java.util.concurrent.TimeUnit;

public final class GetJob {
  private static final long CALL_TIMEOUT_S = 10;

  private GetJob() {}

  public static void main(String[] args) throws InterruptedException {
    if (args.length != 2) {
      System.err.println("usage: GetJob HOST:PORT JOB_ID");
      System.exit(2);
    }
    // The nodes in development and tests serve plaintext gRPC.
    ManagedChannel channel = ManagedChannelBuilder.forTarget(args[0]).usePlaintext().build();
    int exitCode = 0;
    try {
      Job job =
          JobServiceGrpc.newBlockingStub(channel)
              .withDeadlineAfter(CALL_TIMEOUT_S, TimeUnit.SECONDS)
              .getJob(GetJobRequest.newBuilder().setJobId(args[1]).build())
              .getJob();
      System.out.println(job.getId() + " " + job.getTopic() + " " + job.getState().name());
    } catch (StatusRuntimeException e) {
      System.err.println("GetJob failed: " + e.getStatus().getCode() + ": " + e.getStatus().getDescription());
      exitCode = 1;
    } finally {
      channel.shutdownNow().awaitTermination(CALL_TIMEOUT_S, TimeUnit.SECONDS);
    }
    System.exit(exitCode);
  }
}
