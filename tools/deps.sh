#!/bin/sh
# deps.sh - installs the Debian packages fsdpmerge needs, when missing.
#
#   tools/deps.sh          build and run: compiler, Open MPI, libzip, cJSON, zlib, HDF5
#   tools/deps.sh --test   also what the test suite uses: cmocka, python3 (JSON checks,
#                          PyTorch 1.13 and numpy to load written .pt files), GNU time,
#                          HDF5 tools, SLURM and munge (the cluster tests), iproute2,
#                          debhelper, tcl and groff (the package, modulefile and man page tests)
#
# Runs apt-get only when something is missing (as root, or through sudo).
set -eu

BUILD="build-essential make pkg-config openmpi-bin libopenmpi-dev libzip-dev libcjson-dev zlib1g-dev libhdf5-openmpi-dev"
TEST="libcmocka-dev python3 python3-numpy python3-torch python3-h5py time hdf5-tools slurm-wlm munge iproute2 util-linux procps gnuplot-nox debhelper tcl groff-base"

want=$BUILD
[ "${1:-}" = "--test" ] && want="$BUILD $TEST"

missing=""
for p in $want; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps.sh: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing > /tmp/fsdpmerge-deps.log 2>&1 || {
    tail -20 /tmp/fsdpmerge-deps.log
    echo "deps.sh: apt-get install failed (log: /tmp/fsdpmerge-deps.log)" >&2
    exit 1
}
