#!/bin/sh
# build_deb.sh - `make deb`: a Debian package from the committed tree.
#
# dpkg-buildpackage writes into the source tree and puts the .deb in its
# parent, so the package is built from a copy under build/deb/ and the tree
# stays clean. Result: build/deb/fsdpmerge_VERSION_ARCH.deb (path printed).
set -eu
cd "$(dirname "$0")/.."
v=$(cat VERSION)
top=build/deb
rm -rf "$top"
mkdir -p "$top/fsdpmerge-$v"
# the files git knows, plus uncommitted changes to them: what `make` would build here
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$top/fsdpmerge-$v" 2>/dev/null ||
    { echo "build_deb.sh: copying the tree failed" >&2; exit 1; }
(cd "$top/fsdpmerge-$v" && DEB_BUILD_OPTIONS="parallel=$(nproc) nocheck" dpkg-buildpackage -b -us -uc) > "$top/build.log" 2>&1 || {
    tail -30 "$top/build.log" >&2
    echo "build_deb.sh: dpkg-buildpackage failed (log: $top/build.log)" >&2
    exit 1
}
ls "$PWD/$top"/fsdpmerge_"$v"_*.deb
