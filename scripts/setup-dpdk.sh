#!/usr/bin/env bash
# Set up the DPDK peer used by vpmd's vhost-user tests and benchmark (run as root, idempotent):
#   - dpdk-testpmd and its vhost / virtio_user PMDs (Debian package dpdk-dev, DPDK 22.11),
#   - tcpdump (the tests read vpmd's capture files with it),
#   - at least $HUGEPAGES 2 MiB hugepages reserved (default 512),
#   - hugetlbfs mounted on /dev/hugepages.
# Usage: sudo bash scripts/setup-dpdk.sh
set -euo pipefail

HUGEPAGES="${HUGEPAGES:-512}"

if [ "$(id -u)" != 0 ]; then
  echo "setup-dpdk.sh: run as root (sudo bash scripts/setup-dpdk.sh)" >&2
  exit 1
fi

if ! command -v dpdk-testpmd >/dev/null 2>&1 || ! command -v tcpdump >/dev/null 2>&1; then
  echo "setup-dpdk.sh: installing dpdk-dev (dpdk-testpmd) and tcpdump"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends dpdk-dev tcpdump >/dev/null
fi
command -v dpdk-testpmd >/dev/null || { echo "setup-dpdk.sh: dpdk-testpmd still missing" >&2; exit 1; }
command -v tcpdump >/dev/null || { echo "setup-dpdk.sh: tcpdump still missing" >&2; exit 1; }

nr=/proc/sys/vm/nr_hugepages
if [ "$(cat "$nr")" -lt "$HUGEPAGES" ]; then
  echo "$HUGEPAGES" >"$nr"
fi
have="$(cat "$nr")"
if [ "$have" -lt "$HUGEPAGES" ]; then
  echo "setup-dpdk.sh: only $have of $HUGEPAGES hugepages could be reserved (memory fragmented?)" >&2
  exit 1
fi

mkdir -p /dev/hugepages
if ! grep -qs ' /dev/hugepages hugetlbfs ' /proc/mounts; then
  mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
fi
mkdir -p /var/run/dpdk

echo "setup-dpdk.sh: dpdk-testpmd at $(command -v dpdk-testpmd), $have hugepages, hugetlbfs on /dev/hugepages"
