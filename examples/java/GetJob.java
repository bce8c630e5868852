// A tiny Jobmesh client in Java: fetches one job with GetJob and prints its id, topic and state.
// Built against Debian's grpc-java, netty and protobuf-java jars (see README.md and the Makefile).
//
//   build/getjob HOST:PORT JOB_ID [BUNDLE_DIR]
//
// With BUNDLE_DIR (`jobmesh cluster client --scope read --out DIR`: ca.pem, client.pem,
// client.key) it speaks TLS, presenting that client certificate, whose scope `read` is its
// credential (no token needed); without, plaintext to a node run with --insecure.
// TLS goes through netty's OpenSSL provider (Debian's netty-tcnative): gRPC needs ALPN, and
// Debian's netty 4.1.48 has the JDK provider's ALPN support patched out ("JDK provider does not
// support ALPN protocol"). build/getjob points java.library.path at the copy of the JNI library
// the Makefile makes (README.md says why a copy).
//
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage or
// when TLS cannot be set up (an unreadable bundle, no netty-tcnative).

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.GrpcSslContexts;
import io.grpc.netty.NettyChannelBuilder;
import io.jobmesh.v1.GetJobRequest;
import io.jobmesh.v1.Job;
import io.jobmesh.v1.JobServiceGrpc;
import io.netty.handler.ssl.OpenSsl;
import io.netty.handler.ssl.SslContext;
import io.netty.handler.ssl.SslContextBuilder;
import io.netty.handler.ssl.SslProvider;
import java.io.File;
import java.util.concurrent.TimeUnit;
import javax.net.ssl.SSLException;

public final class GetJob {
  private static final long CALL_TIMEOUT_S = 10;
  // Nodes are dialed by address, so TLS checks the name every node certificate carries.
  private static final String SERVER_NAME = "node.jobmesh";

  private GetJob() {}

  /** TLS with the bundle's CA and client certificate (PKCS#8 key), or plaintext without one. */
  private static ManagedChannel connect(String target, String bundle) throws SSLException {
    if (bundle == null) {
      return ManagedChannelBuilder.forTarget(target).usePlaintext().build();
    }
    return NettyChannelBuilder.forTarget(target)
        .overrideAuthority(SERVER_NAME)
        .sslContext(tlsContext(new File(bundle)))
        .build();
  }

  /**
   * The client's TLS settings, always on OpenSSL: GrpcSslContexts.forClient() would fall back to
   * the JDK provider when netty-tcnative is missing, which fails later with a message that does
   * not say what is missing; this says it up front.
   */
  private static SslContext tlsContext(File bundle) throws SSLException {
    if (!SslProvider.isAlpnSupported(SslProvider.OPENSSL)) {
      throw new SSLException(
          "TLS needs netty-tcnative (OpenSSL with ALPN) on java.library.path: install"
              + " libnetty-tcnative-java libnetty-tcnative-jni and run build/getjob",
          OpenSsl.unavailabilityCause());
    }
    return GrpcSslContexts.configure(SslContextBuilder.forClient(), SslProvider.OPENSSL)
        .trustManager(new File(bundle, "ca.pem"))
        .keyManager(new File(bundle, "client.pem"), new File(bundle, "client.key"))
        .build();
  }

  public static void main(String[] args) throws InterruptedException {
    if (args.length != 2 && args.length != 3) {
      System.err.println("usage: GetJob HOST:PORT JOB_ID [BUNDLE_DIR]");
      System.exit(2);
    }
    ManagedChannel channel = null;
    try {
      channel = connect(args[0], args.length == 3 ? args[2] : null);
    } catch (SSLException | IllegalArgumentException e) {
      // A bundle that cannot be read (missing file, not PEM) or no OpenSSL: nothing was sent.
      System.err.println("cannot set up TLS: " + e.getMessage());
      System.exit(2);
    }
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
