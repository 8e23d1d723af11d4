#!/usr/bin/env bash
# Installs the Debian packages sandpit needs, only those that are missing.
set -euo pipefail
# Extra packages may be named as arguments (make test adds postgresql, for
# the tenants store's tests).
want=(containerd nftables libseccomp-dev pkg-config iproute2 ca-certificates
	protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf runsc "$@")
# npm installs the SDK test image's packages; any npm will do.
command -v npm >/dev/null || want+=(npm)
missing=()
for p in "${want[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# The image build fetches pinned .debs with apt-get download, which needs the
# package index even when nothing is missing.
if [ ${#missing[@]} -gt 0 ] || ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then
	apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
