#!/usr/bin/env bash
# Starts containerd in the background unless one already answers on $1.
set -euo pipefail
sock=${1:-/run/containerd/containerd.sock}
if ctr --address "$sock" version >/dev/null 2>&1; then
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
	ctr --address "$sock" version >/dev/null 2>&1 && exit 0
	sleep 0.1
done
echo "containerd did not answer on $sock" >&2
exit 1
