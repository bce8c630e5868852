<?php
// A tiny Jobmesh client in PHP: fetches one job with GetJob and prints its id, topic and state.
//
//   php getjob.php HOST:PORT JOB_ID [BUNDLE_DIR]      (after `make`, which generates build/gen)
//
// With BUNDLE_DIR (`jobmesh cluster client --scope read --out DIR`: ca.pem, client.pem,
// client.key) it speaks TLS, presenting that client certificate, whose scope `read` is its
// credential (no token needed); without, plaintext HTTP/2 to a node run with --insecure.
//
// Messages are the classes protoc generates (build/gen) on Debian's php-google-protobuf. Debian
// packages no PHP gRPC extension, which the generated *Client classes need (PECL's `grpc`), so
// the call itself is made here with PHP's curl: a unary gRPC call is one HTTP/2 POST whose body
// is the request in a length-prefixed frame, answered by a framed response and a grpc-status.
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.

declare(strict_types=1);

use Jobmesh\V1\GetJobRequest;
use Jobmesh\V1\GetJobResponse;
use Jobmesh\V1\JobState;

const CALL_TIMEOUT_S = 10;
// Nodes are dialed by address, so TLS checks the name every node certificate carries.
const SERVER_NAME = 'node.jobmesh';
// gRPC status codes by number, for messages (https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
const STATUS_NAMES = [
    'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
    'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED',
    'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED',
];

// Generated classes in build/gen, the protobuf runtime in Debian's /usr/share/php.
spl_autoload_register(function (string $class): void {
    foreach ([__DIR__ . '/build/gen', '/usr/share/php'] as $root) {
        $file = $root . '/' . str_replace('\\', '/', $class) . '.php';
        if (is_file($file)) {
            require_once $file;
            return;
        }
    }
});

/** Calls a unary RPC; returns the response bytes or throws with the gRPC status. */
function unary_call(string $address, string $method, string $request, ?string $bundle): string
{
    $headers = [];
    if ($bundle === null) {
        $curl = curl_init("http://$address/$method");
        curl_setopt($curl, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);  // plaintext HTTP/2 (h2c)
    } else {
        // TLS to the node's certificate name, resolved to the address given; HTTP/2 over ALPN.
        [$host, $port] = [substr($address, 0, strrpos($address, ':')), substr($address, strrpos($address, ':') + 1)];
        $curl = curl_init('https://' . SERVER_NAME . ":$port/$method");
        curl_setopt_array($curl, [
            CURLOPT_HTTP_VERSION => CURL_HTTP_VERSION_2TLS,
            CURLOPT_RESOLVE => [SERVER_NAME . ":$port:" . trim($host, '[]')],
            CURLOPT_CAINFO => "$bundle/ca.pem",
            CURLOPT_SSLCERT => "$bundle/client.pem",
            CURLOPT_SSLKEY => "$bundle/client.key",
        ]);
    }
    curl_setopt_array($curl, [
        CURLOPT_POST => true,
        CURLOPT_HTTPHEADER => ['content-type: application/grpc', 'te: trailers'],
        // One message frame: not compressed (0), big-endian length, the bytes.
        CURLOPT_POSTFIELDS => pack('CN', 0, strlen($request)) . $request,
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT => CALL_TIMEOUT_S,
        // Headers and trailers both come through here; grpc-status is in one of them.
        CURLOPT_HEADERFUNCTION => function ($curl, string $line) use (&$headers): int {
            $parts = explode(':', $line, 2);
            if (count($parts) === 2) {
                $headers[strtolower(trim($parts[0]))] = trim($parts[1]);
            }
            return strlen($line);
        },
    ]);
    $body = curl_exec($curl);
    if ($body === false) {
        throw new RuntimeException('UNAVAILABLE: ' . curl_error($curl));
    }
    $code = (int) ($headers['grpc-status'] ?? 2);
    if ($code !== 0) {
        $message = rawurldecode($headers['grpc-message'] ?? '');
        throw new RuntimeException((STATUS_NAMES[$code] ?? "status $code") . ": $message");
    }
    $length = unpack('N', substr($body, 1, 4))[1];
    return substr($body, 5, $length);
}

if ($argc !== 3 && $argc !== 4) {
    fwrite(STDERR, "usage: getjob.php HOST:PORT JOB_ID [BUNDLE_DIR]\n");
    exit(2);
}
[$address, $jobId, $bundle] = [$argv[1], $argv[2], $argv[3] ?? null];
$request = new GetJobRequest(['job_id' => $jobId]);
try {
    $bytes = unary_call($address, 'jobmesh.v1.JobService/GetJob', $request->serializeToString(), $bundle);
} catch (RuntimeException $e) {
    fwrite(STDERR, 'GetJob failed: ' . $e->getMessage() . "\n");
    exit(1);
}
$response = new GetJobResponse();
$response->mergeFromString($bytes);
$job = $response->getJob();
echo $job->getId(), ' ', $job->getTopic(), ' ', JobState::name($job->getState()), "\n";
