// Package metricstest reads a Prometheus registry in tests: the value of
// one series, and whether label values keep to the vocabulary both
// binaries share.
package metricstest

import (
	"maps"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// The label values both binaries use, lowercase: a dashboard or alert
// written for one reads the other's series the same way.
var (
	// Decisions are the values of every decision label: the policy's
	// sandpit.policy.v1.Decision without its prefix.
	Decisions = []string{"allow", "deny", "would_block"}
	// Terminations are the values of every termination label: the
	// executor's sandpit.executor.v1.Termination without its prefix, and
	// error when the sandbox failed.
	Terminations = []string{"exited", "timeout", "oom", "output_limit", "shutdown", "error"}
)

// Value returns the value of the series name{labels}: a counter's or
// gauge's value, a histogram's sample count. labels must be the series'
// whole label set. It fails the test when there is no such series.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	for _, mf := range gather(t, g) {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !maps.Equal(labelsOf(m), labels) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return 0
}

// CheckLabel fails the test for every series gathered whose label has a
// value outside allowed, and when no series has the label at all (a
// check that checks nothing).
func CheckLabel(t testing.TB, g prometheus.Gatherer, label string, allowed []string) {
	t.Helper()
	seen := false
	for _, mf := range gather(t, g) {
		for _, m := range mf.GetMetric() {
			v, ok := labelsOf(m)[label]
			if !ok {
				continue
			}
			seen = true
			if !slices.Contains(allowed, v) {
				t.Errorf("%s{%s=%q}: not one of %q", mf.GetName(), label, v, allowed)
			}
		}
	}
	if !seen {
		t.Errorf("no series has a %s label", label)
	}
}

func gather(t testing.TB, g prometheus.Gatherer) []*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	return mfs
}

func labelsOf(m *dto.Metric) map[string]string {
	l := map[string]string{}
	for _, p := range m.GetLabel() {
		l[p.GetName()] = p.GetValue()
	}
	return l
}
