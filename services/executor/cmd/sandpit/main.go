// Command sandpit is the operator's tool for sandpit's images. Today it has
// one command:
//
//	sandpit image inspect [--json] [--allow CLASS,...] IMAGE.tar
//
// It reads an image archive (an OCI image layout tar, as deploy/image
// writes, or a docker-archive, as docker save writes) without running
// anything and lists the Node.js version and every shell, interpreter,
// network tool, package manager, compiler, setuid, setgid and capability
// file and world-writable path in it. It exits 0 when no class but node and
// those --allow names is present, 1 when one is (so an operator's CI can
// gate an image on it), 2 on a usage or read error.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/sandpit-run/sandpit/services/executor/internal/imageinspect"
)

// Exit statuses.
const (
	exitClean     = 0
	exitForbidden = 1
	exitError     = 2
)

const usage = "usage: sandpit image inspect [--json] [--allow CLASS,...] IMAGE.tar"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run carries out one command line and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 || args[0] != "image" || args[1] != "inspect" {
		fmt.Fprintln(stderr, usage)
		return exitError
	}
	fs := flag.NewFlagSet("sandpit image inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	allow := fs.String("allow", "", "comma-separated classes that may be present (node always may): "+
		strings.Join(imageinspect.ClassNames(), ", "))
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[2:]); err != nil {
		return exitError
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return exitError
	}
	allowed, err := parseAllow(*allow)
	if err != nil {
		fmt.Fprintln(stderr, "sandpit:", err)
		return exitError
	}
	out, err := inspect(fs.Arg(0), allowed)
	if err != nil {
		fmt.Fprintln(stderr, "sandpit:", err)
		return exitError
	}
	if *asJSON {
		err = writeJSON(stdout, out)
	} else {
		err = writeTable(stdout, out)
	}
	if err != nil {
		fmt.Fprintln(stderr, "sandpit:", err)
		return exitError
	}
	if len(out.Forbidden) > 0 {
		return exitForbidden
	}
	return exitClean
}

// output is the report and what it was read from, as --json prints it.
type output struct {
	Image  string              `json:"image"`
	Format imageinspect.Format `json:"format"`
	*imageinspect.Report
	// Forbidden lists the classes present that --allow did not name.
	Forbidden []imageinspect.Class `json:"forbidden"`
}

func inspect(name string, allowed []imageinspect.Class) (*output, error) {
	img, format, closer, err := imageinspect.Open(name)
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	r, err := imageinspect.Inspect(img)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	forbidden := r.Forbidden(allowed)
	if forbidden == nil {
		forbidden = []imageinspect.Class{}
	}
	return &output{Image: name, Format: format, Report: r, Forbidden: forbidden}, nil
}

func parseAllow(s string) ([]imageinspect.Class, error) {
	var out []imageinspect.Class
	for _, name := range strings.Split(s, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		c, err := imageinspect.ParseClass(name)
		if err != nil {
			return nil, fmt.Errorf("--allow: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

func writeJSON(w io.Writer, out *output) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// writeTable prints the node version, one line a finding (forbidden
// ones marked), the sticky world-writable directories, and the verdict.
func writeTable(w io.Writer, out *output) error {
	node := "absent"
	if out.Node.Present {
		node = "present, version unknown"
	}
	if out.Node.Version != "" {
		var from []string
		for _, v := range out.Node.Versions {
			from = append(from, v.Source+"="+v.Version)
		}
		node = out.Node.Version + " (" + strings.Join(from, "; ") + ")"
		if !out.Node.Present {
			node += ", but no " + imageinspect.NodePath
		}
	}
	fmt.Fprintf(w, "image: %s (%s)\nnode:  %s\n\n", out.Image, out.Format, node)
	forbidden := map[imageinspect.Class]bool{}
	for _, c := range out.Forbidden {
		forbidden[c] = true
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLASS\tPATH\tWHY\tVERDICT")
	for _, f := range out.Findings {
		verdict := "allowed"
		if forbidden[f.Class] {
			verdict = "FORBIDDEN"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Class, f.Path, f.Why, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(out.Sticky) > 0 {
		fmt.Fprintf(w, "\nworld-writable with the sticky bit (not findings): %s\n", strings.Join(out.Sticky, " "))
	}
	if len(out.Forbidden) == 0 {
		_, err := fmt.Fprintln(w, "\nno forbidden class")
		return err
	}
	names := make([]string, len(out.Forbidden))
	for i, c := range out.Forbidden {
		names[i] = string(c)
	}
	_, err := fmt.Fprintf(w, "\nforbidden: %s\n", strings.Join(names, ", "))
	return err
}
