// Package canon is the one canonicalizer of request hosts and paths: the
// egress proxy turns what a sandbox sent into canonical form with it, and
// the policy engine checks with it that what it is asked about is in that
// form and compiles policy patterns with it.
//
// There is exactly one implementation because two would disagree somewhere
// (an IDNA option, an IP spelling, an escape), and any disagreement between
// the component that forwards a request and the one that decides it lets a
// request be decided as one thing and sent as another.
//
// The proxy-facing functions ([CanonicalHost], [SplitHostPort],
// [CanonicalTarget]) accept any spelling a client or server might read and
// return the canonical one, or refuse what is ambiguous. The checking
// functions ([CheckHost], [CheckPath], [CheckSegment]) never rewrite: they
// accept exactly the fixed points of the proxy-facing ones.
package canon

import "errors"

// ErrNotCanonical is wrapped by the errors of the checking functions when
// their input is valid but spelled other than canonically.
var ErrNotCanonical = errors.New("not canonical")
