#!/usr/bin/env bash
# Starts containerd in the background unless one already answers on $1, and
# makes its state directory searchable by others (0711, as containerd 2.x
# makes it): each sandbox runs in a user namespace whose root is an
# unprivileged host user, and the runtime reaches the sandbox's root
# filesystem, under that directory, as that user.
set -euo pipefail
sock=${1:-/run/containerd/containerd.sock}
state=${CONTAINERD_STATE:-/run/containerd}
searchable() { [ ! -d "$state" ] || chmod 0711 "$state"; }
if ctr --address "$sock" version >/dev/null 2>&1; then
	searchable
	exit 0
fi
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
	systemctl start containerd
else
	log=/var/log/sandpit-containerd.log
	echo "starting containerd (log: $log)"
	nohup containerd --address "$sock" >>"$log" 2>&1 &
fi
for _ in $(seq 100); do
	if ctr --address "$sock" version >/dev/null 2>&1; then
		searchable
		exit 0
	fi
	sleep 0.1
done
echo "containerd did not answer on $sock" >&2
exit 1
