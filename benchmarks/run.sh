#!/usr/bin/env bash
# Runs the peer benchmarks and prints the medians and the ratios of ours to
# the floor and to each peer, per workload, then the accuracy comparison.
# The benchmarks start their own redis-server (on a free loopback port);
# this script starts nothing by hand. Needs go and redis-server on PATH.
#
# Usage: benchmarks/run.sh [-count N] [-bench RE] [-benchtime T] [-o FILE] [-md] [-no-accuracy]
#   -count N       runs of each benchmark (default 6; env COUNT)
#   -bench RE      benchmarks to run (default .; env BENCH)
#   -benchtime T   go test -benchtime (default 0.5s; env BENCHTIME; 6 runs take about 8 minutes)
#   -o FILE        raw go test output (default: a new file under ${TMPDIR:-/tmp})
#   -md            print the tables as Markdown (for the README)
#   -no-accuracy   skip the accuracy comparison (TestAccuracy, about 30 s)
set -euo pipefail

count=${COUNT:-6}
bench=${BENCH:-.}
benchtime=${BENCHTIME:-0.5s}
out=""
md=""
accuracy=1
while [ $# -gt 0 ]; do
	case "$1" in
	-count) count=$2; shift 2 ;;
	-bench) bench=$2; shift 2 ;;
	-benchtime) benchtime=$2; shift 2 ;;
	-o) out=$2; shift 2 ;;
	-md) md=-md; shift ;;
	-no-accuracy) accuracy=0; shift ;;
	-h|-help|--help) sed -n '2,13p' "$0"; exit 0 ;;
	*) echo "run.sh: unknown argument $1 (try -h)" >&2; exit 2 ;;
	esac
done
if [ -z "$out" ]; then
	out=$(mktemp "${TMPDIR:-/tmp}/dthrottle-bench.XXXXXX")
fi
out=$(realpath "$out")
cd "$(dirname "$0")"

command -v redis-server >/dev/null || { echo "run.sh: redis-server is not on PATH" >&2; exit 1; }
# The test binary is built once and run -count times with -test.count 1, so
# that the runs of ours, the floor and the peers interleave in time and a
# slow spell of a shared machine does not fall on one library only.
bin=$(mktemp "${TMPDIR:-/tmp}/dthrottle-bench-bin.XXXXXX")
go test -c -o "$bin" .
cmd="for i in 1..$count: benchmarks.test -test.run '^\$' -test.bench '$bench' -test.benchmem -test.count 1 -test.benchtime $benchtime -test.timeout 0"
{
	echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) in benchmarks/: $cmd"
	echo "# machine: $(uname -srm), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//'), $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
	echo "# $(go version); $(redis-server --version)"
} >"$out"
echo "Writing $out" >&2
for i in $(seq 1 "$count"); do
	echo "run.sh: run $i of $count" >&2
	"$bin" -test.run '^$' -test.bench "$bench" -test.benchmem -test.count 1 \
		-test.benchtime "$benchtime" -test.timeout 0 | tee -a "$out" >&2
done
rm -f "$bin"

echo
grep '^# ' "$out"
echo
go run ./cmd/ratios $md "$out"

gopath_bin=$(go env GOPATH)/bin
if [ -x "$gopath_bin/benchstat" ]; then
	"$gopath_bin/benchstat" "$out" >"$out.benchstat" 2>&1 || true
	echo
	echo "benchstat's view (confidence intervals): $out.benchstat"
fi

if [ "$accuracy" = 1 ]; then
	echo
	echo "Accuracy under contention (go test -run TestAccuracy -v):"
	go test -count=1 -run '^TestAccuracy$' -v . | sed -n 's/^    accuracy_test.go:[0-9]*: //p; /^        /p; /FAIL/p'
fi
