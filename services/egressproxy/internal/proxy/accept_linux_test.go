package proxy

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/sandpit-run/sandpit/services/daemon/fdtest"
)

// TestAcceptingAgainWithNoConnectionWaiting runs Serve out of descriptors
// for real: the test process's RLIMIT_NOFILE leaves one descriptor free, a
// connection the proxy holds takes it, and the accept after it fails with
// EMFILE although no connection waits. Once the held connection closes,
// Accepting is nil again within acceptRetryMax and the probe, with no other
// connection arriving to prove it (before acceptProbe, the failure stood
// until the next one did, and health stayed NOT_SERVING), and the next
// connection is served.
func TestAcceptingAgainWithNoConnectionWaiting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held, release := make(chan struct{}, 1), make(chan struct{})
	rec := &refusalRecorder{}
	p := New(Config{
		Decider: rec,
		OriginalDst: func(net.Conn) (netip.AddrPort, error) {
			select {
			case held <- struct{}{}:
			default:
			}
			<-release
			return netip.AddrPort{}, errors.New("test: no original destination")
		},
		Metrics: NewMetrics(prometheus.NewRegistry()),
		Log:     slog.New(slog.DiscardHandler),
	})
	serving(t, p, ln)

	// The client's socket is made while descriptors are plenty;
	// connecting it takes none. The one descriptor left free is the one
	// the proxy's accept takes.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	restore := fdtest.Limit(t, 1)
	if err := unix.Connect(fd, &unix.SockaddrInet4{Port: ln.Addr().(*net.TCPAddr).Port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the proxy never took the connection")
	}
	waitAccepting := func(want func(error) bool) (time.Duration, error) {
		start := time.Now()
		for {
			err := p.Accepting()
			if want(err) || time.Since(start) > acceptRetryMax+acceptProbe+2*time.Second {
				return time.Since(start), err
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := waitAccepting(func(err error) bool { return err != nil }); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("Accepting with the one free descriptor taken = %v, want EMFILE", err)
	}

	close(release)
	took, err := waitAccepting(func(err error) bool { return err == nil })
	restore()
	if err != nil {
		t.Fatalf("Accepting %v after the held connection closed = %v, want nil with no connection waiting", took, err)
	}
	t.Logf("accepting again %v after the held connection was released", took)

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read succeeded; want the proxy to close the connection it has no original destination for")
	}
	if got := len(rec.all()); got != 2 {
		t.Errorf("%d refusals reported, want 2 (the held connection and the last)", got)
	}
}
