#!/usr/bin/env bash
# Runs a command as if the CPU's L1 data cache had another geometry, to check that needle's numbers
# do not depend on the machine: candle's matmul (the gemm crate) sizes its blocks from the cache
# geometry it reads in /sys, and needle's products are meant to round the same whatever it reads
# (crates/needle-runtime/src/matmul.rs). Linux, as root: the fake geometry lives in a private mount
# namespace and disappears with the command.
#
#   scripts/dev/l1-cache.sh WAYS SIZE COMMAND...
#   scripts/dev/l1-cache.sh 8 32K target/release/needle zoo build … --out /tmp/a
#
# 8-way 32K is the common L1 (most Intel and AMD server cores); 12-way 48K is newer Intel.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 WAYS SIZE COMMAND..." >&2
  exit 2
fi
ways=$1 size=$2
shift 2
if [ "$(id -u)" -ne 0 ]; then
  echo "$0: needs root (unshare -m and bind mounts)" >&2
  exit 2
fi
fake=$(mktemp -d)
trap 'rm -rf "$fake"' EXIT
mounts=""
for cache in /sys/devices/system/cpu/cpu[0-9]*/cache; do
  cpu=$(basename "$(dirname "$cache")")
  mkdir -p "$fake/$cpu"
  for index in "$cache"/index*; do
    dst="$fake/$cpu/$(basename "$index")"
    mkdir -p "$dst"
    for f in level type size ways_of_associativity coherency_line_size shared_cpu_list; do
      [ -r "$index/$f" ] && cat "$index/$f" >"$dst/$f"
    done
    if [ "$(cat "$dst/level")" = 1 ] && [ "$(cat "$dst/type")" = Data ]; then
      echo "$ways" >"$dst/ways_of_associativity"
      echo "$size" >"$dst/size"
    fi
  done
  mounts="$mounts mount --bind '$fake/$cpu' '$cache';"
done
unshare -m bash -c "$mounts"' exec "$@"' l1-cache "$@"
