package decide

import (
	"net/netip"
	"sync"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
)

// releaseHandler holds what OnRelease set.
type releaseHandler struct {
	mu sync.Mutex
	f  func(netip.Addr)
}

// OnRelease sets f to be called with a source address when the executor
// says the execution holding it ended (a Release notice); the proxy closes
// that address's connections. f runs on the receiving goroutine and must
// not block.
func (c *Client) OnRelease(f func(netip.Addr)) {
	c.releases.mu.Lock()
	defer c.releases.mu.Unlock()
	c.releases.f = f
}

// notice handles resp if it is a notice rather than an answer, and says
// whether it was.
func (c *Client) notice(resp *egressv1.DecideResponse) bool {
	r := resp.GetRelease()
	if r == nil {
		return false
	}
	ip, err := netip.ParseAddr(r.GetSourceIp())
	if err != nil {
		c.log.Warn("release notice with a bad source address", "source_ip", r.GetSourceIp(), "error", err)
		return true
	}
	c.releases.mu.Lock()
	f := c.releases.f
	c.releases.mu.Unlock()
	if f != nil {
		f(ip.Unmap())
	}
	return true
}
