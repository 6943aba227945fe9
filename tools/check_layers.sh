#!/bin/sh
# check_layers.sh - fails when a source or header includes a layer it may not.
#
# Each folder src/LAYER/ has a README.md whose line "May include: a, b, ..."
# is the rule; headers live in include/LAYER/ and are included as
# "LAYER/name.h". Also fails on a source outside a layer folder or a flat
# (layer-less) include, so the rule cannot be sidestepped.
#   usage: tools/check_layers.sh [ROOT]     (prints each violation, exit 1 if any)
set -u
cd "${1:-$(dirname "$0")/..}" || exit 2
bad=0
for f in src/*.c src/*.h include/*.h; do
    [ -e "$f" ] || continue
    echo "$f: not in a layer folder"; bad=1
done
for dir in src/*/; do
    layer=$(basename "$dir")
    rule=$(sed -n 's/^May include: *//p' "$dir/README.md" 2>/dev/null | tr -d ' ')
    if [ -z "$rule" ]; then echo "$dir: README.md has no 'May include:' line"; bad=1; continue; fi
    for f in "$dir"*.c "include/$layer/"*.h; do
        [ -e "$f" ] || continue
        for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f"); do
            case "$inc" in
                */*) target=${inc%%/*} ;;
                *) [ -e "$(dirname "$f")/$inc" ] && continue  # a private header beside the file
                   echo "$f: includes \"$inc\" without its layer"; bad=1; continue ;;
            esac
            case ",$rule," in
                *",$target,"*) ;;
                *) echo "$f: includes \"$inc\": layer '$layer' may include only $rule"; bad=1 ;;
            esac
        done
    done
done
for dir in include/*/; do
    [ -d "src/$(basename "$dir")" ] || { echo "$dir: no matching src/ folder"; bad=1; }
done
[ "$bad" -eq 0 ] && echo "layers: ok ($(ls -d src/*/ | wc -l) layers)"
exit "$bad"
