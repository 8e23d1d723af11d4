package sandbox

import (
	"errors"
	"fmt"
	"sync"

	"github.com/sandpit-run/sandpit/services/executor/internal/ring"
)

// UserNSSize is how many ids each sandbox's user namespace maps: 0 to
// 65535 inside, as on an ordinary host, so the image's users (root, the
// sandbox user 65532, nobody) all exist.
const UserNSSize = 1 << 16

// ErrNoHostIDs is returned when every host id range is in use.
var ErrNoHostIDs = errors.New("no free host id range for a user namespace")

// HostIDs hands out disjoint ranges of host uids and gids, one per running
// sandbox: range i is [base + i*UserNSSize, base + (i+1)*UserNSSize). So a
// process that escaped its sandbox is neither root on the host nor the
// same host user as any other sandbox running then.
type HostIDs struct {
	base   uint32
	ranges *ring.Ring
}

// NewHostIDs returns count ranges from base. base must be at least
// UserNSSize (clear of the host's own users), a multiple of it, and the
// last range must end below 2^32-1 (the kernel's invalid id).
func NewHostIDs(base uint32, count int) (*HostIDs, error) {
	switch {
	case count < 1:
		return nil, fmt.Errorf("host id ranges: count %d must be at least 1", count)
	case base < UserNSSize || base%UserNSSize != 0:
		return nil, fmt.Errorf("host id ranges: base %d must be a multiple of %d, and not 0", base, UserNSSize)
	case uint64(base)+uint64(count)*UserNSSize > 1<<32-1:
		return nil, fmt.Errorf("host id ranges: %d ranges of %d from %d pass 2^32-2, the largest id", count, UserNSSize, base)
	}
	return &HostIDs{base: base, ranges: ring.New(count)}, nil
}

// Take returns the first host id of a free range and the function that
// frees it.
func (h *HostIDs) Take() (uint32, func(), error) {
	i, ok := h.ranges.Take()
	if !ok {
		return 0, nil, ErrNoHostIDs
	}
	var once sync.Once
	return h.base + uint32(i)*UserNSSize, func() { once.Do(func() { h.ranges.Free(i) }) }, nil
}
