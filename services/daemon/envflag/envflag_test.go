package envflag

import (
	"flag"
	"strings"
	"testing"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }
func (l *list) Repeatable()        {}

func TestApply(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	a := fs.String("listen-addr", "default", "")
	b := fs.Int("max-queue", 1, "")
	c := fs.String("given", "default", "")
	var l list
	fs.Var(&l, "upstream", "")
	if err := fs.Parse([]string{"--given", "flag"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"SANDPIT_LISTEN_ADDR": "env",
		"SANDPIT_MAX_QUEUE":   "7",
		"SANDPIT_GIVEN":       "env",
		"SANDPIT_UPSTREAM":    "a=1, b=2",
	}
	if err := Apply(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	if *a != "env" || *b != 7 || *c != "flag" || strings.Join(l, "|") != "a=1|b=2" {
		t.Errorf("got %q %d %q %q", *a, *b, *c, l)
	}
}

func TestApplyReportsBadValues(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("max-queue", 1, "")
	_ = fs.Parse(nil)
	err := Apply(fs, func(k string) string { return map[string]string{"SANDPIT_MAX_QUEUE": "many"}[k] })
	if err == nil || !strings.Contains(err.Error(), "SANDPIT_MAX_QUEUE") {
		t.Errorf("err %v, want one naming the variable", err)
	}
}
