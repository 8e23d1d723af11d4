//go:build integration

package egress

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/decision"
	"github.com/sandpit-run/sandpit/services/policy"
)

// TestPolicyFileReload changes the operator's policy file under a running
// Egress: a valid change takes effect, a broken one keeps the last good
// policy. It builds real (empty) nftables tables under its own name.
func TestPolicyFileReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	write := func(y string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("version: 1\ndefault: allow\n")
	e, err := New(context.Background(), Config{
		Pool: "10.252.0.0/24", ProxyPort: 1, DNSPort: 2,
		Table: "sandpit_egress_test", PolicyFile: path, IfPrefix: "sg", NamePrefix: "spegtest-",
	}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}()
	req := policy.Request{Method: "GET", Host: "api.example.com", Path: "/"}
	decision := func() policyv1.Decision { return e.base.Load().Decide(req).Decision }
	waitFor := func(want policyv1.Decision) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for decision() != want {
			if time.Now().After(deadline) {
				t.Fatalf("decision %v, want %v after the file changed", decision(), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if decision() != policyv1.Decision_DECISION_ALLOW {
		t.Fatalf("initial decision %v", decision())
	}
	write("version: 1\ndefault: deny\n")
	waitFor(policyv1.Decision_DECISION_DENY)

	write("version: 1\ndefault: maybe\n") // does not load
	time.Sleep(3 * time.Second)           // more than one poll
	if decision() != policyv1.Decision_DECISION_DENY {
		t.Errorf("a broken file replaced the policy: %v", decision())
	}
	write("version: 1\ndefault: allow\n")
	waitFor(policyv1.Decision_DECISION_ALLOW)
}

func TestNoPolicyFileDeniesAll(t *testing.T) {
	c, _, err := loadPolicy("", false)
	if err != nil {
		t.Fatal(err)
	}
	req := policy.Request{Method: "GET", Host: "api.example.com", Path: "/"}
	if d := c.Decide(req); d.Decision != policyv1.Decision_DECISION_DENY || d.Source != SourceOperator {
		t.Errorf("without a policy file: %v by %q", d.Decision, d.Source)
	}
	if _, _, err := loadPolicy("/does/not/exist.yaml", false); err == nil {
		t.Error("a missing policy file loaded")
	}
	// When tenants decide, no policy file means no operator policy: the
	// execution's narrowing alone decides, and without one it is denied.
	none, _, err := loadPolicy("", true)
	if err != nil || none != nil {
		t.Fatalf("optional operator policy = %v, %v; want none", none, err)
	}
	allowAll, err := policy.Compile(&policyv1.Policy{DefaultAction: policyv1.Action_ACTION_ALLOW})
	if err != nil {
		t.Fatal(err)
	}
	if d := chain(none, allowAll.From("tenant")).Decide(req); d.Decision != policyv1.Decision_DECISION_ALLOW || d.Source != "tenant" {
		t.Errorf("tenant's policy alone: %v by %q", d.Decision, d.Source)
	}
	if d := chain(none, nil).Decide(req); d.Decision != policyv1.Decision_DECISION_DENY {
		t.Errorf("no policy at all: %v", d.Decision)
	}
	if d := chain(c, allowAll.From("tenant")).Decide(req); d.Decision != policyv1.Decision_DECISION_DENY || d.Source != SourceOperator {
		t.Errorf("operator's deny-all under a tenant that allows: %v by %q", d.Decision, d.Source)
	}
}

// TestAttachTrustsTheHelloCA attaches sandboxes before and after a proxy
// said hello on the decision service: only then do they get its CA, and a
// sandbox whose proxy went away is told so. It builds real namespaces and
// (empty) nftables tables under the test's own names.
func TestAttachTrustsTheHelloCA(t *testing.T) {
	e, err := New(context.Background(), Config{
		Pool: "10.252.0.0/24", ProxyPort: 1, DNSPort: 2,
		Table: "sandpit_egress_test", IfPrefix: "sg", NamePrefix: "spegtest-",
	}, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	}()
	attach := func(id string) *Attachment {
		t.Helper()
		a, err := e.Attach(context.Background(), id, nil, make(chan *executorv1.NetworkEvent, 1))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	before := attach("before")
	if !strings.Contains(before.NetworkError, "egress proxy unavailable") || len(before.Env) != 0 {
		t.Errorf("without a proxy: network error %q, env %q", before.NetworkError, before.Env)
	}
	if err := before.Detach(); err != nil {
		t.Fatal(err)
	}

	srv := grpc.NewServer()
	egressv1.RegisterDecisionServiceServer(srv, decision.NewService(e.Registry(), nil, slog.New(slog.DiscardHandler)))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := egressv1.NewDecisionServiceClient(conn).Decide(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ca := caPEM(t)
	if err := stream.Send(&egressv1.DecideRequest{Kind: &egressv1.DecideRequest_Hello{Hello: &egressv1.Hello{
		ProxyVersion: "test", CaCertificatePem: ca, TransparentAddress: "0.0.0.0:1", DnsAddress: "0.0.0.0:2",
	}}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !e.Registry().Connected(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the hello was never taken")
		}
	}

	after := attach("after")
	var bundle []byte
	for _, f := range after.ExtraFiles {
		if f.Path == CABundlePath {
			bundle = f.Content
		}
	}
	if after.NetworkError != "" || string(bundle) != string(ca) || len(after.Env) != 1 || after.Env[0] != "NODE_EXTRA_CA_CERTS="+CABundlePath {
		t.Errorf("with a proxy: network error %q, env %q, CA bundle %q", after.NetworkError, after.Env, bundle)
	}
	if !slices.Equal(after.NodeFlags, []string{TLSServerNameFlag}) || !bytes.Contains(tlsServerName, []byte("setServername")) {
		t.Errorf("with a proxy: node flags %q, want the server-name module imported", after.NodeFlags)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); e.Registry().Connected(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stream never ended")
		}
	}
	if err := after.Detach(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(after.NetworkError, "no decision stream") {
		t.Errorf("after the proxy left: network error %q", after.NetworkError)
	}
}

func caPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "egress test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
