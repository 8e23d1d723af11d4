package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// hostPattern is a canonical host pattern: an exact host, or for a wildcard
// the suffix after "*." .
type hostPattern struct {
	name     string
	wildcard bool
}

func (p hostPattern) String() string {
	if p.wildcard {
		return "*." + p.name
	}
	return p.name
}

// parseHostPattern canonicalizes a policy's host field with the proxy's
// canonicalizer, so a pattern means exactly the requests the proxy sends
// under that name. IP literals are allowed as exact hosts so an operator can
// name an address the proxy would otherwise refuse; they never appear under
// a wildcard. An IPv4 address must be written in dotted decimal: the proxy
// reads 010.0.0.1 as 8.0.0.1 and [::ffff:10.0.0.5] as 10.0.0.5, and a
// pattern that silently meant another address than it seems to would
// mislead whoever reads the policy.
func parseHostPattern(s string) (hostPattern, error) {
	if s == "" {
		return hostPattern{}, errors.New("required")
	}
	if s == "*" || s == "*." {
		return hostPattern{}, errors.New(`a bare "*" is not allowed: set the policy's default instead`)
	}
	rest, wildcard := strings.CutPrefix(s, "*.")
	if strings.Contains(rest, "*") {
		return hostPattern{}, errors.New(`"*" is only allowed as the whole first label ("*.example.com")`)
	}
	ch, err := canon.CanonicalHost(rest)
	if err != nil {
		return hostPattern{}, err
	}
	h := ch.Name
	if ch.IP.Is4() && strings.TrimSuffix(rest, ".") != h {
		return hostPattern{}, fmt.Errorf("write %q as %s: requests to that address are decided under that name", rest, h)
	}
	if wildcard {
		if ch.IsIP() {
			return hostPattern{}, errors.New("a wildcard cannot cover IP addresses")
		}
		if !strings.Contains(h, ".") {
			return hostPattern{}, errors.New(`a wildcard needs at least two labels after "*." ("*.example.com")`)
		}
	}
	return hostPattern{name: h, wildcard: wildcard}, nil
}

// hostIndex finds the entry that governs a host: the exact entry if there is
// one, else the wildcard with the longest suffix.
type hostIndex[T any] struct {
	exact    map[string]T
	wildcard map[string]T
}

func newHostIndex[T any]() hostIndex[T] {
	return hostIndex[T]{exact: map[string]T{}, wildcard: map[string]T{}}
}

// add reports false if the pattern is already present.
func (x hostIndex[T]) add(p hostPattern, v T) bool {
	m := x.exact
	if p.wildcard {
		m = x.wildcard
	}
	if _, dup := m[p.name]; dup {
		return false
	}
	m[p.name] = v
	return true
}

// lookup takes a canonical host (see [canon.CheckHost]). Walking the dots from the left tries the
// longest proper suffix first, so the most specific wildcard wins, and a
// wildcard never matches its own suffix (*.example.com is not example.com).
func (x hostIndex[T]) lookup(host string) (T, bool) {
	if v, ok := x.exact[host]; ok {
		return v, true
	}
	if len(x.wildcard) > 0 && !isIPLiteral(host) {
		for i := 0; i < len(host); i++ {
			if host[i] != '.' {
				continue
			}
			if v, ok := x.wildcard[host[i+1:]]; ok {
				return v, true
			}
		}
	}
	var zero T
	return zero, false
}

// isIPLiteral reports whether a canonical host is an IP address: IPv6 has
// colons and IPv4 a numeric last label, which no canonical name has.
func isIPLiteral(host string) bool {
	if strings.IndexByte(host, ':') >= 0 {
		return true
	}
	last := host[strings.LastIndexByte(host, '.')+1:]
	for i := 0; i < len(last); i++ {
		if last[i] < '0' || last[i] > '9' {
			return false
		}
	}
	return last != ""
}
