package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
)

// BenchmarkEgressProxy measures what the proxy and the per-request decision
// add to an HTTPS request: the same Go client asks the same local upstream
// directly and, from inside a sandbox network namespace, through the
// nftables redirect, the proxy (TLS interception, decision over gRPC,
// upstream TLS). Both keep-alive and a new connection per request are
// measured, then requests per second through the proxy with 8 clients.
func BenchmarkEgressProxy(b *testing.B) {
	s := startNetStack(b)
	events := make(chan *executorv1.NetworkEvent, 1)
	att, err := s.e.app.Egress().Attach(context.Background(), "xbench", nil, events)
	if err != nil {
		b.Fatal(err)
	}
	defer att.Detach()
	if att.NetworkError != "" {
		b.Fatal(att.NetworkError)
	}
	// A namespace of the bench's own stands for a sandbox's.
	ns := fmt.Sprintf("spbench-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		b.Fatalf("ip netns add: %v\n%s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	if err := att.Connect("/run/netns/" + ns); err != nil {
		b.Fatal(err)
	}
	proxyRoots := x509.NewCertPool()
	proxyRoots.AppendCertsFromPEM(att.ExtraFiles[1].Content)
	upstreamRoots := x509.NewCertPool()
	upstreamRoots.AddCert(upstreamCA)

	viaProxy := func(keepAlive bool) *http.Client {
		gw := net.JoinHostPort(att.GatewayIP(), "443")
		return &http.Client{Transport: &http.Transport{
			DisableKeepAlives: !keepAlive,
			TLSClientConfig:   &tls.Config{RootCAs: proxyRoots, ServerName: "api.github.test"},
			ForceAttemptHTTP2: false,
			// The socket is made inside the sandbox's namespace, so the
			// connection takes the sandbox's way out: the redirect.
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var c net.Conn
				err := att.Do(func() error {
					var err error
					c, err = (&net.Dialer{}).DialContext(ctx, "tcp4", gw)
					return err
				})
				return c, err
			},
		}}
	}
	direct := func(keepAlive bool) *http.Client {
		addr := s.github.addr()
		return &http.Client{Transport: &http.Transport{
			DisableKeepAlives: !keepAlive,
			TLSClientConfig:   &tls.Config{RootCAs: upstreamRoots, ServerName: "api.github.test"},
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "tcp4", addr)
			},
		}}
	}
	get := func(c *http.Client) error {
		resp, err := c.Get("https://api.github.test/bench")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	measure := func(c *http.Client, n int) []time.Duration {
		var ds []time.Duration
		for range n {
			t0 := time.Now()
			if err := get(c); err != nil {
				b.Fatal(err)
			}
			ds = append(ds, time.Since(t0))
		}
		return ds
	}

	n := max(b.N, 200)
	b.ResetTimer()
	type row struct {
		name           string
		direct, proxed []time.Duration
	}
	var rows []row
	for _, keep := range []bool{true, false} {
		dc, pc := direct(keep), viaProxy(keep)
		measure(dc, 10) // warm: handshakes, leaf minting
		measure(pc, 10)
		name := "keep-alive"
		if !keep {
			name = "new connection"
		}
		rows = append(rows, row{name, measure(dc, n), measure(pc, n)})
	}

	var done atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(3 * time.Second)
	begin := time.Now()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := viaProxy(true)
			for time.Now().Before(deadline) {
				if err := get(c); err != nil {
					b.Error(err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	rps := float64(done.Load()) / time.Since(begin).Seconds()
	b.StopTimer()

	if b.N == 1 {
		return // the sizing run; the figures come from the real one
	}
	fmt.Printf("\nHTTPS GET to a local upstream, %d requests each (added = through the proxy minus direct):\n", n)
	for _, r := range rows {
		d50, d99 := percentile(r.direct, 50), percentile(r.direct, 99)
		p50, p99 := percentile(r.proxed, 50), percentile(r.proxed, 99)
		fmt.Printf("  %-15s direct p50 %6.2f ms p99 %6.2f ms | proxy p50 %6.2f ms p99 %6.2f ms | added p50 %6.2f ms p99 %6.2f ms\n",
			r.name, ms(d50), ms(d99), ms(p50), ms(p99), ms(p50-d50), ms(p99-d99))
		b.ReportMetric(ms(p50-d50), "added-p50-ms-"+metricName(r.name))
		b.ReportMetric(ms(p99-d99), "added-p99-ms-"+metricName(r.name))
	}
	fmt.Printf("  through the proxy, 8 keep-alive clients: %.0f requests/s\n\n", rps)
	b.ReportMetric(rps, "proxy-req/s")
}

func metricName(s string) string {
	if s == "keep-alive" {
		return "keepalive"
	}
	return "newconn"
}
