#!/usr/bin/env bash
# go test -exec wrapper: runs a unit-test binary as nobody, which proves the
# unit tests need no root. Where nobody cannot reach the package directory
# (a checkout under /root, say), it says so and runs the binary as is.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
	exec "$@"
fi
as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups)
if ! "${as_nobody[@]}" test -r . -a -x "$1" 2>/dev/null; then
	echo "unprivileged.sh: nobody cannot reach $PWD or $1; running as root" >&2
	exec "$@"
fi
exec "${as_nobody[@]}" env HOME=/tmp "$@"
