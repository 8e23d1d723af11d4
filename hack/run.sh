#!/usr/bin/env bash
# Runs the whole stack on this host: the egress proxy in the background and
# the executor in the foreground. Stopping the executor stops the proxy.
set -euo pipefail
bin=$1 sock=$2 ns=$3 runc=$4 image=$5 policy=$6
state=/var/lib/sandpit
# The proxy runs as a user of its own: it needs no privilege, and the
# executor's nftables output rule keeps that user's sockets away from cloud
# metadata addresses without touching any other process of the host.
id -u sandpit-egress >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin sandpit-egress
mkdir -p "$state/egress-ca"
chown -R sandpit-egress: "$state/egress-ca"
chmod 0700 "$state/egress-ca"
proxy_log=/var/log/sandpit-egress-proxy.log
echo "starting the egress proxy as sandpit-egress (log: $proxy_log)"
setpriv --reuid=sandpit-egress --regid=sandpit-egress --init-groups \
	"$bin/sandpit-egress-proxy" --decider unix:///run/sandpit/executor/decision.sock --ca-dir "$state/egress-ca" >>"$proxy_log" 2>&1 &
proxy=$!
trap 'kill $proxy 2>/dev/null; wait $proxy 2>/dev/null' EXIT
policy_flag=()
[ -n "$policy" ] && policy_flag=(--policy-file "$policy")
# The executor serves the proxy's decisions on a unix socket only
# sandpit-egress may open (mode 0600, its owner; other peers are refused).
"$bin/sandpit-executor" --containerd-address "$sock" --containerd-namespace "$ns" --runc "$runc" --image "$image" \
	--egress --proxy-user sandpit-egress --decision-listen unix:///run/sandpit/executor/decision.sock "${policy_flag[@]}"
