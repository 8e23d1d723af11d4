// Command sandpit-check asks an executor what it would decide for HTTP
// requests, without running code (sandpit.policy.v1.PolicyService/Check):
// the operator's policy, the tenant's, the token's and an inline one,
// narrowed in that order. It exits 1 when any request would be denied, so
// an operator's CI can gate a policy change on it.
//
//	sandpit-check [-addr 127.0.0.1:50051] [-token-file F | -tenant T [-tier X]]
//	              [-policy inline.yaml] [-f requests.txt] [-json] [METHOD URL]...
//
// A requests file holds one "METHOD URL" a line; blank lines and lines
// starting with # are skipped.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/daemon/grpcserve"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Exit statuses.
const (
	exitAllowed = 0
	exitDenied  = 1
	exitError   = 2
)

type options struct {
	addr, tokenFile, checkTokenFile, tenant, tier, policyFile, requestsFile string
	caFile, certFile, keyFile                                               string
	json, strict                                                            bool
	timeout                                                                 time.Duration
}

func main() {
	var o options
	fs := flag.NewFlagSet("sandpit-check", flag.ContinueOnError)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:50051", "executor address")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the caller's bearer token (sent as authorization: Bearer)")
	fs.StringVar(&o.checkTokenFile, "check-token-file", "", "file holding a token to decide for instead of the caller (CheckRequest.token)")
	fs.StringVar(&o.tenant, "tenant", "", "tenant to decide for (the caller's own when it is authenticated)")
	fs.StringVar(&o.tier, "tier", "", "tier of -tenant")
	fs.StringVar(&o.policyFile, "policy", "", "inline policy (YAML, the policy file format) to narrow with, as ExecuteRequest.policy")
	fs.StringVar(&o.requestsFile, "f", "", "file of requests, one \"METHOD URL\" a line; - reads stdin")
	fs.BoolVar(&o.json, "json", false, "print the CheckResponse as JSON")
	fs.BoolVar(&o.strict, "strict", false, "count would-block verdicts (audit mode) as denied")
	fs.StringVar(&o.caFile, "tls-ca", "", "PEM CA that signed the executor's certificate: connect with TLS")
	fs.StringVar(&o.certFile, "tls-cert", "", "client certificate (PEM) for mTLS, with -tls-key")
	fs.StringVar(&o.keyFile, "tls-key", "", "client key (PEM) of -tls-cert")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "how long the call may take")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: sandpit-check [flags] [METHOD URL]...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(exitError)
	}
	code, err := run(o, fs.Args(), os.Stdin, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandpit-check:", err)
	}
	os.Exit(code)
}

func run(o options, args []string, stdin io.Reader, out io.Writer) (int, error) {
	req, err := request(o, args, stdin)
	if err != nil {
		return exitError, err
	}
	creds, err := transport(o)
	if err != nil {
		return exitError, err
	}
	conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return exitError, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	if o.tokenFile != "" {
		tok, err := readToken(o.tokenFile)
		if err != nil {
			return exitError, err
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
	}
	resp, err := policyv1.NewPolicyServiceClient(conn).Check(ctx, req)
	if err != nil {
		return exitError, err
	}
	if err := report(out, o.json, req, resp); err != nil {
		return exitError, err
	}
	for _, v := range resp.GetVerdicts() {
		if v.GetDecision() == policyv1.Decision_DECISION_DENY || o.strict && v.GetDecision() == policyv1.Decision_DECISION_WOULD_BLOCK {
			return exitDenied, nil
		}
	}
	return exitAllowed, nil
}

// request builds the CheckRequest from the flags, the requests file and the
// METHOD URL pairs of args.
func request(o options, args []string, stdin io.Reader) (*policyv1.CheckRequest, error) {
	req := &policyv1.CheckRequest{Tenant: o.tenant, Tier: o.tier}
	if o.checkTokenFile != "" {
		tok, err := readToken(o.checkTokenFile)
		if err != nil {
			return nil, err
		}
		req.Token = tok
	}
	if o.policyFile != "" {
		p, err := policy.Load(o.policyFile)
		if err != nil {
			return nil, err
		}
		req.Policy = p
	}
	if len(args)%2 != 0 {
		return nil, errors.New("requests on the command line come in pairs: METHOD URL")
	}
	for i := 0; i < len(args); i += 2 {
		req.Requests = append(req.Requests, &policyv1.CheckedRequest{Method: args[i], Url: args[i+1]})
	}
	if o.requestsFile != "" {
		r := stdin
		if o.requestsFile != "-" {
			f, err := os.Open(o.requestsFile)
			if err != nil {
				return nil, err
			}
			defer f.Close()
			r = f
		}
		rs, err := parseRequests(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.requestsFile, err)
		}
		req.Requests = append(req.Requests, rs...)
	}
	if len(req.Requests) == 0 {
		return nil, errors.New("no requests: give METHOD URL pairs or -f FILE")
	}
	return req, nil
}

// parseRequests reads "METHOD URL" lines.
func parseRequests(r io.Reader) ([]*policyv1.CheckedRequest, error) {
	var rs []*policyv1.CheckedRequest
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("line %d: want METHOD URL, got %q", n, line)
		}
		rs = append(rs, &policyv1.CheckedRequest{Method: f[0], Url: f[1]})
	}
	return rs, sc.Err()
}

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// transport is plaintext, or TLS with -tls-ca (and mTLS with -tls-cert).
func transport(o options) (credentials.TransportCredentials, error) {
	if o.caFile == "" {
		if o.certFile != "" {
			return nil, errors.New("-tls-cert needs -tls-ca")
		}
		return insecure.NewCredentials(), nil
	}
	pool := x509.NewCertPool()
	if err := grpcserve.AppendCertsFile(pool, o.caFile, "-tls-ca"); err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if o.certFile != "" {
		c, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return credentials.NewTLS(cfg), nil
}

// report writes the verdicts as a table, or the response as JSON.
func report(w io.Writer, asJSON bool, req *policyv1.CheckRequest, resp *policyv1.CheckResponse) error {
	if asJSON {
		b, err := protojson.MarshalOptions{Multiline: true}.Marshal(resp)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	if resp.GetTenant() != "" {
		fmt.Fprintf(w, "tenant %s", resp.GetTenant())
		if resp.GetTier() != "" {
			fmt.Fprintf(w, ", tier %s", resp.GetTier())
		}
		fmt.Fprintf(w, ", mode %s\n", strings.ToLower(strings.TrimPrefix(resp.GetMode().String(), "MODE_")))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DECISION\tTLS\tMETHOD\tURL\tRULE\tSOURCE\tCODE\tREASON")
	for i, v := range resp.GetVerdicts() {
		r := req.GetRequests()[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", policy.DecisionLabel(v.GetDecision()), tlsLabel(r, v), r.GetMethod(), r.GetUrl(), v.GetRuleId(), v.GetSource(),
			policy.DenialCodeName(v.GetDenialCode()), v.GetReason())
	}
	return tw.Flush()
}

// tlsLabel is the TLS column: how the proxy would carry an https
// request's connection ("passthrough": spliced, its method and path
// unseen; "intercept": decrypted, the request decided by the rules); "-"
// for plain http and for a denied request.
func tlsLabel(r *policyv1.CheckedRequest, v *policyv1.Verdict) string {
	switch {
	case v.GetPassthrough():
		return "passthrough"
	case v.GetDecision() != policyv1.Decision_DECISION_DENY && strings.HasPrefix(strings.ToLower(r.GetUrl()), "https://"):
		return "intercept"
	}
	return "-"
}
