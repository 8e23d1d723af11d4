// Package envflag gives every flag of a FlagSet an environment variable as
// fallback: SANDPIT_ plus the flag name in upper snake case
// (--max-concurrent is SANDPIT_MAX_CONCURRENT). A flag given on the command
// line wins.
package envflag

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// Repeatable is implemented by flag values that take many values; their
// variable holds a comma-separated list, each item set in turn.
type Repeatable interface {
	flag.Value
	Repeatable()
}

// Name is the environment variable that backs the flag name.
func Name(flagName string) string {
	return "SANDPIT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Apply sets every flag of fs that was not given on the command line from
// its variable, when that is set. Call it after fs.Parse.
func Apply(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(Name(f.Name))
		if set[f.Name] || v == "" {
			return
		}
		parts := []string{v}
		if _, ok := f.Value.(Repeatable); ok {
			parts = strings.Split(v, ",")
		}
		for _, p := range parts {
			if err := fs.Set(f.Name, strings.TrimSpace(p)); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", Name(f.Name), err))
			}
		}
	})
	return errors.Join(errs...)
}
