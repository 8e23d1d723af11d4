// Package tenants reads the operator's tenants file: which policy and limits
// each tenant, and each tier of a tenant, gets. A tenant's policy is a
// policy file of its own (package policy's format); a tier's policy, when
// it has one, narrows its tenant's, and its limits can only lower the
// tenant's. A tenant the file does not name, a tier its tenant does not
// list, and a tenant without a policy get nothing: there is no default
// tenant and no default-open policy.
//
// The file (version 1):
//
//	version: 1
//	tenants:
//	  - tenant: acme
//	    mode: audit                # enforce (default) or audit
//	    policy: policies/acme.yaml # relative to this file
//	    limits:
//	      max_concurrent: 4
//	      executions_per_minute: 60
//	      max_timeout: 30s
//	      max_memory: 512MiB
//	      max_requests: 1000       # HTTP requests per execution
//	    tiers:
//	      - tier: free
//	        policy: policies/acme-free.yaml
//	        limits: { max_concurrent: 1 }
//	      - tier: pro
package tenants

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sandpit-run/sandpit/services/executor/internal/limits"
	"github.com/sandpit-run/sandpit/services/policy"
)

// FileVersion is the version of the tenants file this package reads.
const FileVersion = 1

// Errors a lookup returns; the caller maps them to gRPC statuses.
var (
	ErrUnknownTenant = errors.New("unknown tenant")
	ErrUnknownTier   = errors.New("unknown tier")
)

// Limits bound a tenant's executions; 0 means no limit from the tenants
// file (the executor's own maxima still apply).
type Limits struct {
	MaxConcurrent       uint32
	ExecutionsPerMinute uint32
	MaxTimeout          time.Duration
	MaxMemoryBytes      uint64
	// MaxRequests bounds each execution's HTTP requests.
	MaxRequests uint32
}

// lower returns l with each limit of o that is tighter.
func (l Limits) lower(o Limits) Limits {
	return Limits{
		MaxConcurrent:       policy.MinNonZero(l.MaxConcurrent, o.MaxConcurrent),
		ExecutionsPerMinute: policy.MinNonZero(l.ExecutionsPerMinute, o.ExecutionsPerMinute),
		MaxTimeout:          policy.MinNonZero(l.MaxTimeout, o.MaxTimeout),
		MaxMemoryBytes:      policy.MinNonZero(l.MaxMemoryBytes, o.MaxMemoryBytes),
		MaxRequests:         policy.MinNonZero(l.MaxRequests, o.MaxRequests),
	}
}

// Entry is what one tenant and tier get.
type Entry struct {
	Tenant, Tier string
	// Policy is the tenant's policy, narrowed by the tier's if it has one.
	Policy *policy.Compiled
	// Audit is true when the tenant's mode is audit: would-block
	// decisions are let through and reported.
	Audit  bool
	Limits Limits
}

// Set is one version of the tenants file, compiled. It is immutable.
type Set struct {
	tenants map[string]*tenant
	// Files are every file the set was read from: the tenants file and
	// each policy file it names, for a watcher to notice a change in any.
	Files []string
	// secrets are the tenants' secrets of a database (sandpit_secrets);
	// the file has none (they are the secrets directory's).
	secrets map[secretKey][]byte
}

// secretKey is a tenant's secret's name.
type secretKey struct{ tenant, name string }

// Secret returns tenant's secret name, if the set holds it.
func (s *Set) Secret(tenant, name string) ([]byte, bool) {
	v, ok := s.secrets[secretKey{tenant, name}]
	return v, ok
}

type tenant struct {
	entry Entry
	tiers map[string]Entry
}

// Lookup returns what tenant gets in tier; an empty tier is the tenant's
// own entry.
func (s *Set) Lookup(tenantName, tier string) (Entry, error) {
	t, ok := s.tenants[tenantName]
	if !ok {
		return Entry{}, fmt.Errorf("%w %q", ErrUnknownTenant, tenantName)
	}
	if tier == "" {
		return t.entry, nil
	}
	e, ok := t.tiers[tier]
	if !ok {
		return Entry{}, fmt.Errorf("%w %q of tenant %q", ErrUnknownTier, tier, tenantName)
	}
	return e, nil
}

// Len is the number of tenants.
func (s *Set) Len() int { return len(s.tenants) }

type fileDoc struct {
	Version *int        `yaml:"version"`
	Tenants []tenantDoc `yaml:"tenants"`
}

type tenantDoc struct {
	Tenant string    `yaml:"tenant"`
	Mode   string    `yaml:"mode"`
	Policy string    `yaml:"policy"`
	Limits limitsDoc `yaml:"limits"`
	Tiers  []tierDoc `yaml:"tiers"`
}

type tierDoc struct {
	Tier   string    `yaml:"tier"`
	Policy string    `yaml:"policy"`
	Limits limitsDoc `yaml:"limits"`
}

type limitsDoc struct {
	MaxConcurrent       uint32 `yaml:"max_concurrent"`
	ExecutionsPerMinute uint32 `yaml:"executions_per_minute"`
	MaxTimeout          string `yaml:"max_timeout"`
	MaxMemory           string `yaml:"max_memory"`
	MaxRequests         uint32 `yaml:"max_requests"`
}

// names of tenants and tiers: what a JWT claim may sensibly hold, and safe
// in logs and metric labels.
var name = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$`)

// IsName reports whether s can name a tenant or a tier.
func IsName(s string) bool { return name.MatchString(s) }

// Load reads the tenants file at path and every policy file it names.
func Load(path string) (*Set, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load tenants: %w", err)
	}
	s, err := parse(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("load tenants %s: %w", path, err)
	}
	s.Files = append([]string{path}, s.Files...)
	return s, nil
}

// parse reads a tenants file; policy paths are relative to dir. Unknown
// keys, a missing version and more than one document are errors.
func parse(data []byte, dir string) (*Set, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc fileDoc
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty tenants file")
		}
		return nil, err
	}
	if err := dec.Decode(new(yaml.Node)); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	if doc.Version == nil || *doc.Version != FileVersion {
		return nil, fmt.Errorf("version: must be %d", FileVersion)
	}
	var files []string
	// Each policy file is compiled once, however many entries name it.
	compiled := map[string]*policy.Compiled{}
	s, err := build(doc.Tenants, func(field, p string) (*policy.Compiled, error) {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if c, ok := compiled[p]; ok {
			return c, nil
		}
		pol, err := policy.Load(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		c, err := policy.Compile(pol)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", field, p, err)
		}
		compiled[p] = c
		files = append(files, p)
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	s.Files = files
	return s, nil
}

// build compiles tenants; policy turns an entry's policy reference (a file
// path, or a policy document itself) into a policy, field naming the entry
// for errors.
func build(docs []tenantDoc, policyOf func(field, ref string) (*policy.Compiled, error)) (*Set, error) {
	s := &Set{tenants: map[string]*tenant{}}
	for i, td := range docs {
		field := fmt.Sprintf("tenants[%d]", i)
		if !name.MatchString(td.Tenant) {
			return nil, fmt.Errorf("%s.tenant: %q is not a tenant name (letters, digits and ._@:-, at most 128)", field, td.Tenant)
		}
		if _, dup := s.tenants[td.Tenant]; dup {
			return nil, fmt.Errorf("%s.tenant: %q is listed twice", field, td.Tenant)
		}
		var audit bool
		switch td.Mode {
		case "", "enforce":
		case "audit":
			audit = true
		default:
			return nil, fmt.Errorf("%s.mode: %q must be enforce or audit", field, td.Mode)
		}
		if td.Policy == "" {
			return nil, fmt.Errorf("%s.policy: every tenant needs a policy (there is no default policy)", field)
		}
		pol, err := policyOf(field+".policy", td.Policy)
		if err != nil {
			return nil, err
		}
		lim, err := td.Limits.compile(field + ".limits")
		if err != nil {
			return nil, err
		}
		t := &tenant{
			entry: Entry{Tenant: td.Tenant, Policy: pol, Audit: audit, Limits: lim},
			tiers: map[string]Entry{},
		}
		for j, tr := range td.Tiers {
			tf := fmt.Sprintf("%s.tiers[%d]", field, j)
			if !name.MatchString(tr.Tier) {
				return nil, fmt.Errorf("%s.tier: %q is not a tier name", tf, tr.Tier)
			}
			if _, dup := t.tiers[tr.Tier]; dup {
				return nil, fmt.Errorf("%s.tier: %q is listed twice", tf, tr.Tier)
			}
			e := t.entry
			e.Tier = tr.Tier
			if tr.Policy != "" {
				narrow, err := policyOf(tf+".policy", tr.Policy)
				if err != nil {
					return nil, err
				}
				e.Policy = policy.Chain(pol, narrow)
			}
			tl, err := tr.Limits.compile(tf + ".limits")
			if err != nil {
				return nil, err
			}
			e.Limits = lim.lower(tl)
			t.tiers[tr.Tier] = e
		}
		s.tenants[td.Tenant] = t
	}
	return s, nil
}

func (d limitsDoc) compile(field string) (Limits, error) {
	l := Limits{
		MaxConcurrent:       d.MaxConcurrent,
		ExecutionsPerMinute: d.ExecutionsPerMinute,
		MaxRequests:         d.MaxRequests,
	}
	if d.MaxTimeout != "" {
		t, err := time.ParseDuration(d.MaxTimeout)
		if err != nil || t <= 0 {
			return l, fmt.Errorf("%s.max_timeout: %q must be a positive duration such as 30s", field, d.MaxTimeout)
		}
		if t < limits.Floor.Timeout {
			return l, fmt.Errorf("%s.max_timeout: %s is below the executor's floor %s", field, t, limits.Floor.Timeout)
		}
		l.MaxTimeout = t
	}
	if d.MaxMemory != "" {
		b, err := policy.ParseByteSize(d.MaxMemory)
		if err != nil || b == 0 {
			return l, fmt.Errorf("%s.max_memory: %q must be a byte size such as 512MiB", field, d.MaxMemory)
		}
		if b < limits.Floor.MemoryBytes {
			return l, fmt.Errorf("%s.max_memory: %s is below the executor's floor %s", field, d.MaxMemory, policy.FormatByteSize(limits.Floor.MemoryBytes))
		}
		l.MaxMemoryBytes = b
	}
	return l, nil
}
