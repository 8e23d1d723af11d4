package policy

import (
	"testing"

	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
)

// FuzzDecideTLS: for one to four generated policies (genPolicy, with
// pass-through entries), a token's claims among them when the flags say
// so, and any server name and port, the chain's DecideTLS
//   - passes a connection through only if every policy of the chain that
//     does not deny the name alone (an audit one may) has a pass-through
//     entry covering it, none of them an entry with rules, and the claims
//     allow the name;
//   - allows a connection only if each policy alone allows some https
//     request to the name on the port (on 443 for an interception: its
//     requests are decided with their port; and unless an allow rule of
//     its entry comes after a deny rule, which could-allow, and so
//     DecideTLS and DNS, assume does not shadow it), and passes one through
//     allowed only if the chain allows every request on it but a
//     WebSocket upgrade (what the requests of an interception of it
//     would get);
//   - denies a connection only if the chain allows no request on it.
func FuzzDecideTLS(f *testing.F) {
	f.Add([]byte{0x04, 0x01, 0x80, 0x04, 0x00, 0x03, 0x04, 0x02, 0x15}, uint8(1), "api.stripe.com", uint16(443))
	f.Add([]byte{0x05, 0x01, 0xc2, 0x0b, 0x01, 0x80, 0x09, 0x01, 0x83, 0x04}, uint8(2), "a.example.com", uint16(8443))
	f.Add([]byte{0x07, 0x02, 0x80, 0x06, 0x00, 0x84, 0x01, 0x0d, 0x01, 0x02}, uint8(0x13), "api.github.com", uint16(0))
	f.Add([]byte{0x0d, 0x00, 0x81, 0x05, 0x03, 0x09, 0x01, 0x00, 0x04, 0x02}, uint8(0x23), "b.example.com", uint16(9443))
	hosts := []string{"api.stripe.com", "a.example.com", "b.example.com", "api.github.com", "10.0.0.5", "example.org", "example.com"}
	var grid []Request
	// /other/x: a path no generated rule names but "" and "/**".
	for _, p := range []string{"/", "/v1/charges", "/v1/products", "/v1/products/x", "/admin/x", "/v1/x", "/other/x"} {
		// PUT: a method no generated rule names.
		for _, m := range []string{"GET", "POST", "DELETE", "PUT"} {
			grid = append(grid, Request{Method: m, Path: p, Scheme: SchemeHTTPS})
		}
		grid = append(grid, Request{Method: "GET", Path: p, Scheme: SchemeHTTPS, WebSocket: true})
	}
	// decided tells whether the grid's requests to host on port are some,
	// and every one but the WebSocket upgrades, allowed by c: a
	// pass-through entry's default allows requests, not upgrades, so an
	// interception of it denies those (spliced, they are not seen).
	decided := func(c *Compiled, host string, port uint32) (some, every bool) {
		every = true
		for _, r := range grid {
			r.Host, r.Port = host, port
			ok := c.Decide(r).Decision == policyv1.Decision_DECISION_ALLOW
			some, every = some || ok, every && (ok || r.WebSocket)
		}
		return some, every
	}
	f.Fuzz(func(t *testing.T, data []byte, flags uint8, name string, port16 uint16) {
		var sources []*Compiled
		for i := 0; i < 1+int(flags)%4; i++ {
			var c *Compiled
			c, data = genPolicy(data)
			if c == nil {
				return
			}
			sources = append(sources, c)
		}
		claimsAt := -1
		if flags&0x10 != 0 {
			var domains []string
			for i, h := range hosts {
				if flags&0x20 == 0 || i%2 == 0 {
					domains = append(domains, h)
				}
			}
			claims, err := Claims(domains, nil)
			if err != nil {
				t.Fatal(err)
			}
			claimsAt = len(sources)
			sources = append(sources, claims)
		}
		chain := Chain(sources[0], sources[1:]...)
		port := uint32(port16)
		for _, host := range append([]string{name}, hosts...) {
			td := chain.DecideTLS(host, port)
			if td.Decision == policyv1.Decision_DECISION_UNSPECIFIED || (td.Decision == policyv1.Decision_DECISION_ALLOW) != (td.Code == policyv1.DenialCode_DENIAL_CODE_UNSPECIFIED) {
				t.Fatalf("DecideTLS(%q, %d) = %v with code %v", host, port, td.Decision, td.Code)
			}
			onPort := port
			if onPort == 0 {
				onPort = defaultPort[SchemeHTTPS]
			}
			if td.Passthrough {
				covered := 0
				for i, s := range sources {
					alone := s.DecideTLS(host, port)
					if i == claimsAt {
						if !alone.Forward() {
							t.Fatalf("%q passed through, which the token's claims deny", host)
						}
						continue
					}
					if alone.Decision != policyv1.Decision_DECISION_ALLOW && s.layers[0].audit {
						continue // an audit policy's denial: would-block
					}
					e, ok := s.layers[0].hosts.lookup(host)
					if !ok || !e.passthrough || len(e.rules) > 0 || !alone.Passthrough {
						t.Fatalf("%q on %d passed through (%s), but policy %d alone does not: entry %v %+v, alone %v pass=%v",
							host, port, td.RuleID, i, ok, e, alone.Decision, alone.Passthrough)
					}
					covered++
				}
				if covered == 0 {
					t.Fatalf("%q passed through with no policy's pass-through entry covering it", host)
				}
			}
			checkPort := onPort
			if !td.Passthrough {
				checkPort = defaultPort[SchemeHTTPS]
			}
			switch td.Decision {
			case policyv1.Decision_DECISION_ALLOW, policyv1.Decision_DECISION_WOULD_BLOCK:
				for i, s := range sources {
					if e, ok := s.layers[0].hosts.lookup(host); ok && shadowed(e) {
						continue // could-allow does not look past a deny rule
					}
					if some, _ := decided(s, host, checkPort); !some && (td.Decision == policyv1.Decision_DECISION_ALLOW || !s.layers[0].audit) {
						t.Fatalf("DecideTLS(%q, %d) = %v (pass=%v, %s), but policy %d alone allows no request to it on %d",
							host, port, td.Decision, td.Passthrough, td.RuleID, i, checkPort)
					}
				}
				if _, every := decided(chain, host, onPort); td.Passthrough && td.Decision == policyv1.Decision_DECISION_ALLOW && !every {
					t.Fatalf("%q on %d passed through allowed, but the chain denies some request to it", host, port)
				}
			case policyv1.Decision_DECISION_DENY:
				if some, _ := decided(chain, host, onPort); some {
					t.Fatalf("DecideTLS(%q, %d) denies (%s: %s), but the chain allows a request to it", host, port, td.RuleID, td.Reason)
				}
			}
		}
	})
}

// shadowed reports whether an allow rule of e comes after a deny rule,
// which may shadow it: could-allow counts the allow rule anyway (only a
// deny rule for every method and path shuts the entry).
func shadowed(e *hostEntry) bool {
	deny := false
	for _, ru := range e.rules {
		if ru.allow && deny {
			return true
		}
		deny = deny || !ru.allow
	}
	return false
}
