// A tiny Jobmesh client in Go: fetches one job with GetJob and prints its id, topic and state.
// Built against Debian's Go gRPC sources in GOPATH mode (see README.md and the Makefile).
//
//	build/getjob HOST:PORT JOB_ID [BUNDLE_DIR]
//
// With BUNDLE_DIR (`jobmesh cluster client --scope read --out DIR`: ca.pem, client.pem,
// client.key) it speaks TLS, presenting that client certificate, whose scope `read` is its
// credential (no token needed); without, plaintext to a node run with --insecure.
//
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	jobmeshv1 "jobmesh.example/api/jobmesh/v1"
)

const callTimeout = 10 * time.Second

// codeName spells a status code as the gRPC docs do (NotFound -> NOT_FOUND).
func codeName(code fmt.Stringer) string {
	var name strings.Builder
	for i, r := range code.String() {
		if i > 0 && unicode.IsUpper(r) {
			name.WriteRune('_')
		}
		name.WriteRune(unicode.ToUpper(r))
	}
	return name.String()
}

// transport is TLS with the bundle's CA and client certificate (nodes are dialed by address, so
// TLS checks the name every node certificate carries, node.jobmesh), or plaintext without one.
// (grpc-go 1.33, Debian's, has no insecure.NewCredentials yet.)
func transport(bundle string) (grpc.DialOption, error) {
	if bundle == "" {
		return grpc.WithInsecure(), nil
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(bundle, "client.pem"), filepath.Join(bundle, "client.key"))
	if err != nil {
		return nil, err
	}
	ca, err := ioutil.ReadFile(filepath.Join(bundle, "ca.pem"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	config := &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, ServerName: "node.jobmesh"}
	return grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
}

func main() {
	if len(os.Args) != 3 && len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: getjob HOST:PORT JOB_ID [BUNDLE_DIR]")
		os.Exit(2)
	}
	bundle := ""
	if len(os.Args) == 4 {
		bundle = os.Args[3]
	}
	option, err := transport(bundle)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot read the bundle:", err)
		os.Exit(2)
	}
	conn, err := grpc.Dial(os.Args[1], option)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot connect:", err)
		os.Exit(1)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	response, err := jobmeshv1.NewJobServiceClient(conn).GetJob(ctx, &jobmeshv1.GetJobRequest{JobId: os.Args[2]})
	if err != nil {
		s := status.Convert(err)
		fmt.Fprintf(os.Stderr, "GetJob failed: %s: %s\n", codeName(s.Code()), s.Message())
		conn.Close()
		os.Exit(1)
	}
	job := response.GetJob()
	fmt.Println(job.GetId(), job.GetTopic(), job.GetState())
}
