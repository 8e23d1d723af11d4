// Command sandpit-run runs a Node.js file in a sandpit sandbox and behaves
// like running it locally: the program's stdout and stderr are copied to
// ours as they arrive, every network attempt is reported on stderr, and
// sandpit-run exits with the program's exit code.
//
//	sandpit-run [-addr 127.0.0.1:50051] [-timeout 10s] [-policy policy.json] [-q] file.js [args...]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "executor address")
	timeout := flag.Duration("timeout", 0, "wall-clock timeout (0: the executor's default)")
	policyFile := flag.String("policy", "", "inline network policy, as sandpit.policy.v1.Policy in JSON")
	quiet := flag.Bool("q", false, "do not report network events and the result on stderr")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: sandpit-run [flags] file.js [args...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	code, err := run(ctx, *addr, *timeout, *policyFile, *quiet, flag.Arg(0), flag.Args()[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandpit-run:", err)
		os.Exit(125)
	}
	os.Exit(code)
}

func run(ctx context.Context, addr string, timeout time.Duration, policyFile string, quiet bool, file string, args []string) (int, error) {
	src, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	req := &executorv1.ExecuteRequest{
		Code:       string(src),
		Entrypoint: filepath.Base(file),
		Args:       args,
	}
	if timeout > 0 {
		req.Limits = &executorv1.Limits{Timeout: durationpb.New(timeout)}
	}
	if policyFile != "" {
		b, err := os.ReadFile(policyFile)
		if err != nil {
			return 0, err
		}
		req.Policy = &policyv1.Policy{}
		if err := protojson.Unmarshal(b, req.Policy); err != nil {
			return 0, fmt.Errorf("policy %s: %w", policyFile, err)
		}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	stream, err := executorv1.NewExecutorServiceClient(conn).Execute(ctx, req)
	if err != nil {
		return 0, err
	}
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return 0, errors.New("the stream ended without a result")
		}
		if err != nil {
			return 0, err
		}
		switch e := ev.GetEvent().(type) {
		case *executorv1.ExecuteResponse_Stdout:
			_, _ = os.Stdout.Write(e.Stdout.GetData())
		case *executorv1.ExecuteResponse_Stderr:
			_, _ = os.Stderr.Write(e.Stderr.GetData())
		case *executorv1.ExecuteResponse_Network:
			if !quiet {
				n := e.Network
				fmt.Fprintf(os.Stderr, "[sandpit] %s %s %s %s: %s (rule %s) %s\n", n.GetKind(), n.GetMethod(), n.GetUrl(),
					n.GetDecision(), statusOrReason(n), n.GetRuleId(), n.GetError())
			}
		case *executorv1.ExecuteResponse_Result:
			r := e.Result
			if !quiet {
				fmt.Fprintf(os.Stderr, "[sandpit] %s exit %d %s wall %s cpu %s peak %d bytes, %d allowed, %d blocked %s\n",
					r.GetTermination(), r.GetExitCode(), r.GetSignal(), r.GetWallTime().AsDuration(), r.GetCpuTime().AsDuration(),
					r.GetPeakMemoryBytes(), r.GetRequestsAllowed(), r.GetRequestsBlocked(), r.GetNetworkError())
			}
			return int(r.GetExitCode()), nil
		}
	}
}

func statusOrReason(n *executorv1.NetworkEvent) string {
	if n.GetStatusCode() != 0 {
		return fmt.Sprint(n.GetStatusCode())
	}
	return n.GetReason()
}
