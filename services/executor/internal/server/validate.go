package server

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	executorv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/executor/v1"
	policyv1 "github.com/sandpit-run/sandpit/gen/go/sandpit/policy/v1"
	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/executor/internal/ociruntime"
	"github.com/sandpit-run/sandpit/services/executor/internal/sandbox"
	"github.com/sandpit-run/sandpit/services/policy"
)

// Bounds on the shape of a request, beyond the byte budget of code_bytes.
const (
	maxFiles      = 1000
	maxPathLen    = 255
	maxArgs       = 256
	maxEnv        = 256
	maxLabels     = 32
	maxLabelValue = 256
	// maxSecrets bounds a request's secrets, as the proxy bounds the
	// placeholders it finds in one request.
	maxSecrets = 16
	// defaultEntrypoint names a single-file program's file.
	defaultEntrypoint = "main.js"
)

var (
	envName  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	labelKey = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)
)

// reservedEnv are set by the executor; a request may not override them.
var reservedEnv = []string{"HOME", "PATH", "NODE_EXTRA_CA_CERTS"}

// program is a validated request, ready for the sandbox.
type program struct {
	files      []sandbox.File
	entrypoint string
	image      string
	runtime    ociruntime.Name
	limits     limits.Set
	// policy is the inline policy, compiled; nil when the request has none.
	policy *policy.Compiled
}

// validate checks req against the executor's configuration and returns the
// program it describes, or every violation found.
func (s *Service) validate(req *executorv1.ExecuteRequest) (program, []limits.Violation) {
	var p program
	var vs []limits.Violation
	bad := func(field, format string, args ...any) {
		vs = append(vs, limits.Violation{Field: field, Reason: fmt.Sprintf(format, args...)})
	}

	p.limits, vs = limits.Resolve(req.GetLimits(), s.cfg.Defaults, s.cfg.Maxima)

	var size uint64
	switch {
	case req.GetCode() != "" && len(req.GetFiles()) > 0:
		bad("code", "set either code or files, not both")
	case req.GetCode() != "":
		p.entrypoint = req.GetEntrypoint()
		if p.entrypoint == "" {
			p.entrypoint = defaultEntrypoint
		}
		if reason := checkPath(p.entrypoint); reason != "" {
			bad("entrypoint", "%s", reason)
		}
		p.files = []sandbox.File{{Path: p.entrypoint, Content: []byte(req.GetCode())}}
		size += uint64(len(req.GetCode()))
	case len(req.GetFiles()) > 0:
		if len(req.GetFiles()) > maxFiles {
			bad("files", "%d files, at most %d are allowed", len(req.GetFiles()), maxFiles)
			break
		}
		seen := map[string]bool{}
		for i, f := range req.GetFiles() {
			field := fmt.Sprintf("files[%d].path", i)
			if reason := checkPath(f.GetPath()); reason != "" {
				bad(field, "%s", reason)
				continue
			}
			if seen[f.GetPath()] {
				bad(field, "duplicate path %q", f.GetPath())
				continue
			}
			seen[f.GetPath()] = true
			p.files = append(p.files, sandbox.File{Path: f.GetPath(), Content: f.GetContent()})
			size += uint64(len(f.GetContent()))
		}
		for _, f := range p.files {
			for dir := path.Dir(f.Path); dir != "."; dir = path.Dir(dir) {
				if seen[dir] {
					bad("files", "%q is both a file and a directory", dir)
				}
			}
		}
		p.entrypoint = req.GetEntrypoint()
		switch {
		case p.entrypoint == "" && len(p.files) == 1:
			p.entrypoint = p.files[0].Path
		case p.entrypoint == "":
			bad("entrypoint", "required when there is more than one file")
		case !seen[p.entrypoint]:
			bad("entrypoint", "%q is not one of the files", p.entrypoint)
		}
	default:
		bad("code", "no code: set code or files")
	}
	if path.Ext(p.entrypoint) == ".tsx" {
		bad("entrypoint", "%q: node strips the types of .ts, .mts and .cts files but does not compile JSX; compile it to JavaScript first", p.entrypoint)
	}

	if len(req.GetArgs()) > maxArgs {
		bad("args", "%d arguments, at most %d are allowed", len(req.GetArgs()), maxArgs)
	}
	for i, a := range req.GetArgs() {
		if strings.IndexByte(a, 0) >= 0 {
			bad(fmt.Sprintf("args[%d]", i), "contains a NUL byte")
		}
		size += uint64(len(a))
	}

	if len(req.GetEnv()) > maxEnv {
		bad("env", "%d variables, at most %d are allowed", len(req.GetEnv()), maxEnv)
	}
	for k, v := range req.GetEnv() {
		field := fmt.Sprintf("env[%q]", k)
		switch {
		case !envName.MatchString(k):
			bad(field, "name must match %s", envName)
		case slices.Contains(reservedEnv, k):
			bad(field, "%s is set by the executor", k)
		case strings.IndexByte(v, 0) >= 0:
			bad(field, "value contains a NUL byte")
		}
		size += uint64(len(k) + len(v))
	}
	size += uint64(len(req.GetStdin()))
	validateSecrets(req, bad)

	if size > p.limits.CodeBytes {
		bad("code", "code, args, env and stdin take %d bytes, above the limit of %d (limits.code_bytes)", size, p.limits.CodeBytes)
	}

	if len(req.GetLabels()) > maxLabels {
		bad("labels", "%d labels, at most %d are allowed", len(req.GetLabels()), maxLabels)
	}
	for k, v := range req.GetLabels() {
		field := fmt.Sprintf("labels[%q]", k)
		switch {
		case !labelKey.MatchString(k):
			bad(field, "key must match %s", labelKey)
		case len(v) > maxLabelValue || !utf8.ValidString(v):
			bad(field, "value must be valid UTF-8 of at most %d bytes", maxLabelValue)
		}
	}

	p.policy = inlinePolicy(req.GetPolicy(), bad)

	// Whether the image may be used is a permission, not a shape: admit
	// checks it, after the request is known to be well formed.
	p.image = s.imageRef(req.GetImage())
	slices.SortFunc(vs, func(a, b limits.Violation) int { return strings.Compare(a.Field, b.Field) })
	return p, vs
}

// validateSecrets checks the shape of req.secrets: environment names not
// otherwise set, secret names. Whether the caller may use them is checked
// once its tenant is known (bindSecrets).
func validateSecrets(req *executorv1.ExecuteRequest, bad func(field, format string, args ...any)) {
	if len(req.GetSecrets()) > maxSecrets {
		bad("secrets", "%d secrets, at most %d are allowed", len(req.GetSecrets()), maxSecrets)
	}
	for k, name := range req.GetSecrets() {
		field := fmt.Sprintf("secrets[%q]", k)
		_, inEnv := req.GetEnv()[k]
		switch {
		case !envName.MatchString(k):
			bad(field, "name must match %s", envName)
		case slices.Contains(reservedEnv, k):
			bad(field, "%s is set by the executor", k)
		case inEnv:
			bad(field, "%s is in env too: a variable holds a value or a secret's placeholder, not both", k)
		case !policy.IsSecretName(name):
			bad(field, "%q is not a secret name (a-z, 0-9 and _.-, at most 64)", name)
		}
	}
	if len(req.GetPolicy().GetSecrets()) > 0 {
		bad("policy.secrets", "an inline policy cannot bind secrets: only the executor's and the tenants' policies do")
	}
}

// checkPath returns why p is not a usable file path under the code dir, or "".
func checkPath(p string) string {
	switch {
	case p == "":
		return "path is empty"
	case len(p) > maxPathLen:
		return fmt.Sprintf("path is longer than %d bytes", maxPathLen)
	case !utf8.ValidString(p) || strings.ContainsAny(p, "\x00\\"):
		return "path must be UTF-8 without NUL or backslash"
	case strings.HasPrefix(p, "/"):
		return "path must be relative to /sandbox"
	case path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../"):
		return "path must be clean: no empty, . or .. segments, no trailing /"
	}
	return ""
}

// imageAllowed matches ref against the allowlist; an entry ending in * is a
// prefix.
// profileName is how a request names an image by profile: node, node-sdk,
// node-sdk:22.
var profileName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}(:[0-9]{1,3})?$`)

// imageRef is the reference a request's image names: the default for none;
// a profile, with the Node.js major of the default image unless it says
// one, under sandbox.LocalRepository (sandpit.local/node-sdk:22); anything
// else as it is.
func (s *Service) imageRef(name string) string {
	if name == "" {
		return s.cfg.DefaultImage
	}
	if !profileName.MatchString(name) {
		return name
	}
	profile, major, ok := strings.Cut(name, ":")
	if !ok {
		major = defaultMajor(s.cfg.DefaultImage)
	}
	return sandbox.LocalRepository + profile + ":" + major
}

// defaultMajor is the Node.js major of the default image when it is a
// profile's (sandpit.local/node:24), else 24.
func defaultMajor(def string) string {
	if rest, ok := strings.CutPrefix(def, sandbox.LocalRepository); ok {
		if _, major, ok := strings.Cut(rest, ":"); ok && major != "" {
			return major
		}
	}
	return "24"
}

func (s *Service) imageAllowed(ref string) bool {
	for _, a := range s.cfg.ImageAllowlist {
		if a == ref || (strings.HasSuffix(a, "*") && strings.HasPrefix(ref, strings.TrimSuffix(a, "*"))) {
			return true
		}
	}
	return ref == s.cfg.DefaultImage
}

// inlinePolicy compiles a request's inline policy, nil for none; each
// problem goes to bad as a field under "policy".
func inlinePolicy(p *policyv1.Policy, bad func(field, format string, args ...any)) *policy.Compiled {
	if p == nil {
		return nil
	}
	c, err := policy.Compile(p)
	var fes policy.Errors
	switch {
	case errors.As(err, &fes):
		for _, fe := range fes {
			bad("policy."+fe.Field, "%s", fe.Reason)
		}
	case err != nil:
		bad("policy", "%v", err)
	}
	return c
}
