#!/usr/bin/env bash
# Installing: `make install` / `make uninstall` under a DESTDIR, the manual
# page generated from the option table that prints --help, the environment
# module evaluated by Tcl, and the Debian package (`make deb`) installed with
# dpkg into a clean root, where the built-in example runs with the installed
# binaries and dpkg removes it again without leftovers.
source "$(dirname "$0")/../lib.sh"
cd "$FM_ROOT" || exit 1
version=$(cat VERSION)

# ---- make install / uninstall
dest=$SCRATCH/dest
prefix=/opt/fsdpmerge-test
if make -s install DESTDIR="$dest" PREFIX="$prefix" > "$OUT_LOG" 2>&1; then
    pass "make install DESTDIR PREFIX"
else
    fail "make install: $(tail -5 "$OUT_LOG")"
fi
root=$dest$prefix
want="bin/fsdpmerge bin/fsdpsynth bin/fsdpmerge-run share/fsdpmerge/fsdpmerge.sbatch share/fsdpmerge/modulefile
      share/man/man1/fsdpmerge.1 share/doc/fsdpmerge/README.md share/doc/fsdpmerge/design.md share/doc/fsdpmerge/cli.md"
missing=""
for f in $want; do [ -f "$root/$f" ] || missing="$missing $f"; done
[ -z "$missing" ] && pass "install puts binaries, launchers, man page, docs and modulefile in place" || fail "not installed:$missing"
[ -x "$root/bin/fsdpmerge-run" ] && [ -x "$root/bin/fsdpmerge" ] && pass "installed programs are executable" || fail "install modes"
"$root/bin/fsdpmerge" --version | grep -qx "fsdpmerge $version" && pass "installed fsdpmerge --version says $version" || fail "installed --version"
# the launcher finds the fsdpmerge installed beside it
"$root/bin/fsdpmerge-run" --dry-run "$FIX/fsdp2_ws4_tied/global_step_1" > "$OUT_LOG" 2>&1
grep -q -- "-np 4 .*$root/bin/fsdpmerge " "$OUT_LOG" && pass "installed fsdpmerge-run runs the installed fsdpmerge" || fail "fsdpmerge-run: $(cat "$OUT_LOG")"

# ---- the manual page: the program's own option table, valid roff, every --help option
man1=$root/share/man/man1/fsdpmerge.1
bin/fsdpmerge --man | cmp -s - "$man1" && pass "fsdpmerge.1 is what 'fsdpmerge --man' prints" || fail "installed man page differs from --man"
missing=""
for opt in $(bin/fsdpmerge --help | grep -oE -- '--[a-z_-]+' | sort -u); do
    grep -q -- "$(printf '%s' "$opt" | sed 's/-/\\\\-/g')" "$man1" || missing="$missing $opt"
done
[ -z "$missing" ] && pass "the man page lists every option of --help" || fail "man page lacks:$missing"
warn=$(groff -man -Tutf8 -ww -z "$man1" 2>&1)
[ -z "$warn" ] && pass "the man page is clean roff (groff -ww: no warnings)" || fail "groff warnings: $warn"
MANWIDTH=100 man -l "$man1" 2> /dev/null | grep -q "EXIT STATUS" && pass "man -l renders it" || fail "man -l fsdpmerge.1"

# ---- the modulefile, evaluated by Tcl with the module commands stubbed
tcl=$SCRATCH/module.tcl
cat > "$tcl" << 'TCL'
set out {}
proc prepend-path {var val} { global out; lappend out "prepend $var $val" }
proc setenv {var val} { global out; lappend out "setenv $var $val" }
proc module-whatis {args} {}
proc conflict {args} {}
source [lindex $argv 0]
puts [join $out \n]
TCL
tclsh "$tcl" "$root/share/fsdpmerge/modulefile" > "$OUT_LOG" 2>&1
if grep -qx "prepend PATH $prefix/bin" "$OUT_LOG" && grep -qx "prepend MANPATH $prefix/share/man" "$OUT_LOG" \
    && grep -qx "setenv FSDPMERGE_HOME $prefix/share/fsdpmerge" "$OUT_LOG"; then
    pass "the modulefile sets PATH, MANPATH and FSDPMERGE_HOME for PREFIX"
else
    fail "modulefile: $(cat "$OUT_LOG")"
fi

make -s uninstall DESTDIR="$dest" PREFIX="$prefix" > "$OUT_LOG" 2>&1
left=$(find "$dest" -type f | sed "s|$dest||")
[ -z "$left" ] && pass "make uninstall removes every installed file" || fail "left after uninstall: $left"

# ---- the Debian package
if make -s deb > "$OUT_LOG" 2>&1 && deb=$(grep '\.deb$' "$OUT_LOG" | tail -1) && [ -f "$deb" ]; then
    pass "make deb builds $(basename "$deb")"
else
    fail "make deb: $(tail -10 "$OUT_LOG")"
    exit 0
fi
list=$(dpkg-deb -c "$deb" | awk '{print $6}')
missing=""
for f in ./usr/bin/fsdpmerge ./usr/bin/fsdpsynth ./usr/bin/fsdpmerge-run ./usr/share/fsdpmerge/fsdpmerge.sbatch \
    ./usr/share/fsdpmerge/modulefile ./usr/share/man/man1/fsdpmerge.1.gz ./usr/share/doc/fsdpmerge/copyright; do
    grep -qx -- "$f" <<< "$list" || missing="$missing $f"
done
[ -z "$missing" ] && pass "the package holds the programs, launchers, modulefile, man page and docs" || fail "package lacks:$missing"
deps=$(dpkg-deb -f "$deb" Depends)
missing=""
for p in openmpi-bin libopenmpi3 libzip4 libcjson1; do grep -q "$p" <<< "$deps" || missing="$missing $p"; done
[ -z "$missing" ] && pass "package Depends names Open MPI, libzip, cJSON (computed from the binaries)" || fail "Depends lacks:$missing ($deps)"
unmet=""
for p in $(sed 's/([^)]*)//g; s/,/ /g; s/|[^,]*//g' <<< "$deps"); do
    dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed" || unmet="$unmet $p"
done
[ -z "$unmet" ] && pass "every dependency of the package is an installed Debian package here" || fail "unmet:$unmet"

# install into a clean root with dpkg (its own database), run the example with the installed binaries
croot=$SCRATCH/croot
mkdir -p "$croot/var/lib/dpkg/info" "$croot/var/lib/dpkg/updates"
touch "$croot/var/lib/dpkg/status"
if dpkg --root="$croot" --force-depends --force-not-root --log=/dev/null -i "$deb" > "$OUT_LOG" 2>&1 \
    && dpkg --root="$croot" -s fsdpmerge 2> /dev/null | grep -q "Status: install ok installed"; then
    pass "dpkg installs the package into a clean root"
else
    fail "dpkg -i into a clean root: $(tail -5 "$OUT_LOG")"
fi
if FSDPMERGE_BINDIR="$croot/usr/bin" EXAMPLE_DIR="$SCRATCH/example" bash tools/example.sh > "$OUT_LOG" 2>&1 \
    && grep -q "byte-identical to the expected output" "$OUT_LOG" && grep -q "$croot/usr/bin/fsdpmerge" "$OUT_LOG"; then
    pass "the built-in example runs with the installed binaries (output byte-identical to the expected)"
else
    fail "example with the installed package: $(tail -5 "$OUT_LOG")"
fi
dpkg --root="$croot" --log=/dev/null -r fsdpmerge > "$OUT_LOG" 2>&1
left=$(find "$croot/usr" -type f 2> /dev/null)
[ -z "$left" ] && pass "dpkg -r removes every file of the package" || fail "left after dpkg -r: $left"
