package netns

import "github.com/vishvananda/netns"

// Do runs fn on a locked OS thread inside the sandbox's namespace; sockets
// fn opens belong to that namespace. For tests and diagnostics.
func (sb *Sandbox) Do(fn func() error) error {
	ns, err := netns.GetFromPath(sb.Path)
	if err != nil {
		return err
	}
	defer ns.Close()
	return inNamespace(ns, fn)
}
