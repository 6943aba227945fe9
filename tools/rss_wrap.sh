#!/bin/sh
# rss_wrap.sh PREFIX CMD... - runs CMD under GNU time and writes its peak RSS
# (KiB) to PREFIX.<MPI rank>; used by the benchmark to measure every process.
prefix=$1
shift
exec /usr/bin/time -f "%M" -o "$prefix.${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-0}}" "$@"
