package proxy

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/sandpit-run/sandpit/services/daemon/bound"
	"github.com/sandpit-run/sandpit/services/policy/canon"
)

// rawServerName returns the host_name of the server_name extension in
// the ClientHello whose records start hello, as sent. crypto/tls refuses
// some names outright (one ending in a dot, which Node sends for
// "https://api.example.com./") and says only that the hello is malformed;
// this lets the proxy say why instead. ok is false when no name is found.
func rawServerName(hello []byte) (name string, ok bool) {
	// Join the handshake records' fragments.
	var hs []byte
	for len(hello) >= 5 && hello[0] == 0x16 {
		n := int(binary.BigEndian.Uint16(hello[3:5]))
		if len(hello) < 5+n {
			hs = append(hs, hello[5:]...)
			break
		}
		hs = append(hs, hello[5:5+n]...)
		hello = hello[5+n:]
	}
	// Handshake header (type 1, length), version, random.
	if len(hs) < 4 || hs[0] != 1 {
		return "", false
	}
	r := reader(hs[4:])
	if !r.skip(2+32) || !r.skipVec(1) || !r.skipVec(2) || !r.skipVec(1) {
		return "", false
	}
	exts, ok := r.vec(2)
	for ok && len(exts) >= 4 {
		typ := binary.BigEndian.Uint16(exts)
		var body reader
		exts = exts[2:]
		if body, ok = exts.vec(2); !ok {
			return "", false
		}
		if typ != 0 {
			continue
		}
		list, ok := body.vec(2)
		for ok && len(list) >= 3 {
			kind := list[0]
			list = list[1:]
			var v reader
			if v, ok = list.vec(2); ok && kind == 0 {
				return string(v), true
			}
		}
		return "", false
	}
	return "", false
}

// reader consumes a TLS message from the front.
type reader []byte

func (r *reader) skip(n int) bool {
	if len(*r) < n {
		return false
	}
	*r = (*r)[n:]
	return true
}

// vec takes a vector with a size-byte length prefix.
func (r *reader) vec(size int) (reader, bool) {
	if len(*r) < size {
		return nil, false
	}
	n := 0
	for _, b := range (*r)[:size] {
		n = n<<8 | int(b)
	}
	if !r.skip(size) || len(*r) < n {
		return nil, false
	}
	v := (*r)[:n]
	*r = (*r)[n:]
	return v, true
}

func (r *reader) skipVec(size int) bool {
	_, ok := r.vec(size)
	return ok
}

// trailingDotSNI tells whether a ClientHello crypto/tls could not parse
// names a server with a trailing dot.
func trailingDotSNI(seen []byte) (string, bool) {
	name, ok := rawServerName(seen)
	return name, ok && strings.HasSuffix(name, ".")
}

// trailingDotReason says why a trailing-dot name was refused, and what to
// call instead.
func trailingDotReason(name string) string {
	want := strings.TrimSuffix(name, ".")
	if h, err := canon.CanonicalHost(name); err == nil {
		want = h.Name
	}
	return fmt.Sprintf("TLS server name %q ends with a dot, which TLS does not allow (RFC 6066) and the proxy cannot terminate; use %q",
		bound.String(name, 256), bound.String(want, 256))
}
