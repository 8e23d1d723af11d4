package app

import (
	"fmt"
	"os/user"
	"strconv"
)

// lookupUID turns --proxy-user (a uid or a user name) into a uid.
func lookupUID(name string) (uint32, error) {
	if uid, err := strconv.ParseUint(name, 10, 32); err == nil {
		return uint32(uid), nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, fmt.Errorf("proxy-user %q: %w", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("proxy-user %q: uid %q: %w", name, u.Uid, err)
	}
	return uint32(uid), nil
}
