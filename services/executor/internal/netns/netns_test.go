//go:build integration

package netns

import (
	"testing"

	"github.com/vishvananda/netlink"
)

// TestDeleteLinkAlreadyGone deletes a veth that is not there, as when the
// kernel destroyed it with its namespace between Sweep's listing and its
// delete: not an error, and not counted.
func TestDeleteLinkAlreadyGone(t *testing.T) {
	deleted, err := deleteLink(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "sgnotthere0", Index: 1 << 30}, PeerName: "sgnotthere1"})
	if err != nil || deleted {
		t.Fatalf("deleteLink of a missing veth: deleted %v, error %v; want neither", deleted, err)
	}
}
