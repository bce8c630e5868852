// A tiny Jobmesh client in Go: fetches one job with GetJob and prints its id, topic and state.
// Built against Debian's Go gRPC sources in GOPATH mode (see README.md and the Makefile).
//
//	build/getjob HOST:PORT JOB_ID
//
// Exit code 0 when the job was found, 1 when the call failed (e.g. NOT_FOUND), 2 on bad usage.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
	"unicode"

	"google.golang.org/grpc"
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

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: getjob HOST:PORT JOB_ID")
		os.Exit(2)
	}
	// The nodes in development and tests serve plaintext gRPC. (grpc-go 1.33, Debian's, has
	// no insecure.NewCredentials yet.)
	conn, err := grpc.Dial(os.Args[1], grpc.WithInsecure())
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
