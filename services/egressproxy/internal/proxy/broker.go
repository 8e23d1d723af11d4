package proxy

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	egressv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/egress/v1"
	"github.com/sandpit-run/sandpit/services/egressproxy/internal/swap"
)

// Credential brokering: the sandbox holds placeholders, never secrets. The
// proxy finds placeholders in each request (swap.Find) and asks with them;
// the executor answers an allowed request whose placeholders are all where
// their bindings let them go with the swaps, and refuses any other. The
// proxy then places the values into the upstream request only, after the
// request was decided and logged as the sandbox sent it, and scrubs them
// from the response back into placeholders. It keeps no value past the
// exchange it was answered for.

// errUnscrubbable ends an exchange whose response could not be scrubbed of
// the secrets placed in its request: a compressed body.
var errUnscrubbable = errors.New("response to a request carrying a secret is compressed")

// findPlaceholders records the placeholders r carries in c; more than a
// question may carry makes r a violation.
func (c *checked) findPlaceholders(r *http.Request) {
	found, err := swap.Find(r.Header, c.path, c.query)
	if err != nil {
		c.block(fmt.Sprintf("more than %d placeholders of secrets in one request", swap.MaxFound))
	}
	c.found = make([]*egressv1.FoundPlaceholder, len(found))
	for i, f := range found {
		c.found[i] = &egressv1.FoundPlaceholder{Id: f.ID, Place: f.Place, Name: f.Name, Value: f.Value}
	}
}

func swapsOf(answer []*egressv1.Swap) []swap.Swap {
	if len(answer) == 0 {
		return nil
	}
	s := make([]swap.Swap, len(answer))
	for i, a := range answer {
		s[i] = swap.Swap{Placeholder: a.GetPlaceholder(), Value: a.GetValue()}
	}
	return s
}

// placeSecrets puts v's secrets into out, the upstream request, and asks
// for an uncompressed response, which can be scrubbed.
func placeSecrets(out *http.Request, v verdict) error {
	if len(v.swaps) == 0 {
		return nil
	}
	q, err := swap.Apply(out.Header, out.URL.RawQuery, v.swaps)
	if err != nil {
		return err
	}
	out.URL.RawQuery = q
	out.Header.Set("Accept-Encoding", "identity")
	return nil
}

// scrubResponse replaces v's secrets by their placeholders in resp, the
// response to a request they were placed into: in its headers now, in its
// body as it is read (so its length is no longer known), and it drops the
// trailers, which it cannot scrub before they are written. A compressed
// body is refused (errUnscrubbable).
func scrubResponse(resp *http.Response, v verdict) error {
	if len(v.swaps) == 0 {
		return nil
	}
	swap.ScrubHeader(resp.Header, v.swaps)
	if ce := strings.TrimSpace(resp.Header.Get("Content-Encoding")); ce != "" && !strings.EqualFold(ce, "identity") {
		return errUnscrubbable
	}
	resp.Body = scrubbedBody{Reader: swap.NewScrubber(resp.Body, v.swaps), Closer: resp.Body}
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	resp.Trailer = nil
	return nil
}

type scrubbedBody struct {
	io.Reader
	io.Closer
}
