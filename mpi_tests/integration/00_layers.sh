#!/usr/bin/env bash
# The source layout: every file sits in a layer folder, and no include goes to
# a layer its README does not allow (tools/check_layers.sh). The checker is
# also run on a copy with a planted upward include, which it must reject.
source "$(dirname "$0")/../lib.sh"

if "$FM_ROOT/tools/check_layers.sh" "$FM_ROOT" > "$OUT_LOG" 2>&1; then
    pass "no include goes to a layer it may not ($(cat "$OUT_LOG"))"
else
    fail "layer rule broken: $(head -5 "$OUT_LOG")"
fi

copy=$SCRATCH/layers
mkdir -p "$copy/tools"
cp -r "$FM_ROOT/src" "$FM_ROOT/include" "$copy/"
cp "$FM_ROOT/tools/check_layers.sh" "$copy/tools/"
sed -i '1a #include "engine/xfer.h"' "$copy/src/hf/st.c"
if ! "$copy/tools/check_layers.sh" "$copy" > "$OUT_LOG" 2>&1 && grep -q 'src/hf/st.c: includes "engine/xfer.h"' "$OUT_LOG"; then
    pass "an upward include (hf -> engine) is rejected, naming the file"
else
    fail "planted upward include not caught: $(cat "$OUT_LOG")"
fi
sed -i '2d' "$copy/src/hf/st.c"
touch "$copy/src/loose.c"
if ! "$copy/tools/check_layers.sh" "$copy" > "$OUT_LOG" 2>&1 && grep -q 'src/loose.c: not in a layer folder' "$OUT_LOG"; then
    pass "a source outside the layer folders is rejected"
else
    fail "loose source not caught: $(cat "$OUT_LOG")"
fi
