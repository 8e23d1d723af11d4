package policy

import (
	"fmt"
	"slices"
)

// MaxPortsPerHost bounds hosts[].ports.
const MaxPortsPerHost = 16

// Schemes a host entry can allow, and the port each uses when the entry
// names none.
const (
	SchemeHTTPS = "https"
	SchemeHTTP  = "http"
)

var defaultPort = map[string]uint32{SchemeHTTPS: 443, SchemeHTTP: 80}

// endpoints is what a host entry allows besides paths: schemes, and ports
// (nil: the default port of each scheme).
type endpoints struct {
	schemes []string
	ports   []uint32
}

// compileEndpoints checks hosts[i].schemes and hosts[i].ports. An entry
// that names neither allows https on 443 only, so naming a host never opens
// its other ports.
func compileEndpoints(c *checker, field string, schemes []string, ports []uint32) endpoints {
	var ep endpoints
	for k, s := range schemes {
		f := fmt.Sprintf("%s.schemes[%d]", field, k)
		switch {
		case s != SchemeHTTPS && s != SchemeHTTP:
			c.add(f, "scheme %q: use https or http (lowercase)", s)
		case slices.Contains(ep.schemes, s):
			c.add(f, "%s is listed twice", s)
		default:
			ep.schemes = append(ep.schemes, s)
		}
	}
	if len(schemes) == 0 {
		ep.schemes = []string{SchemeHTTPS}
	}
	if n := len(ports); n > MaxPortsPerHost {
		c.add(field+".ports", "%d ports, at most %d are allowed", n, MaxPortsPerHost)
	}
	for k, p := range ports {
		f := fmt.Sprintf("%s.ports[%d]", field, k)
		switch {
		case p == 0 || p > 65535:
			c.add(f, "port %d is not in 1-65535", p)
		case slices.Contains(ep.ports, p):
			c.add(f, "port %d is listed twice", p)
		default:
			ep.ports = append(ep.ports, p)
		}
	}
	return ep
}

// check returns the rule id suffix and reason when the entry does not allow
// scheme and port, or "" when it does.
func (ep endpoints) check(pattern hostPattern, scheme string, port uint32) (string, string) {
	if !slices.Contains(ep.schemes, scheme) {
		return "schemes", fmt.Sprintf("%s is allowed over %v only, not %s", pattern, ep.schemes, scheme)
	}
	if ep.ports == nil {
		if port != defaultPort[scheme] {
			return "ports", fmt.Sprintf("%s is allowed on port %d for %s only, not %d; name other ports in the host's ports", pattern, defaultPort[scheme], scheme, port)
		}
		return "", ""
	}
	if !slices.Contains(ep.ports, port) {
		return "ports", fmt.Sprintf("%s is allowed on ports %v only, not %d", pattern, ep.ports, port)
	}
	return "", ""
}

// canonicalEndpoint fills in what a request left out: https, and the
// scheme's default port.
func canonicalEndpoint(scheme string, port uint32) (string, uint32, error) {
	if scheme == "" {
		scheme = SchemeHTTPS
	}
	def, ok := defaultPort[scheme]
	if !ok {
		return "", 0, fmt.Errorf("scheme %q is not http or https", scheme)
	}
	if port == 0 {
		port = def
	}
	if port > 65535 {
		return "", 0, fmt.Errorf("port %d is not in 1-65535", port)
	}
	return scheme, port, nil
}
