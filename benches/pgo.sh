#!/usr/bin/env bash
# pgo.sh: a profile-guided build of fulcrum (PGO). Three steps:
#   1. an instrumented release build (target/pgo/gen), which counts every branch it takes;
#   2. a training run through it, about a minute and a half: `examples/pgo_train.rs` serves
#      origins and replays the benchmarks' scenarios on loopback: HTTP/1 (small and 16 KiB
#      bodies, 50 and 200 connections), h2 and L4 through fulcrum plain, with the access log,
#      with 100 routes and with a rate limit, POSTs of 1 and 16 KiB (with a Content-Length,
#      then chunked) through the plain one, then `tls-handshake.sh`'s (full ECDSA and RSA
#      handshakes, resumed handshakes, HTTPS keep-alive). It needs nothing but cargo;
#   3. the release build that uses the merged profile: target/pgo/release/fulcrum.
# `target/release/fulcrum` is left as it is. Run the result like any build, or measure it:
#   FULCRUM_BIN=target/pgo/release/fulcrum python3 benches/compare.py --no-build load
#
# usage: benches/pgo.sh [--seconds S]     (S: each training phase's length, default 3)
#
# What the profile buys is in the README ("Performance"). Code the training does not reach
# is optimised as LLVM sees fit without counts, as in a plain build.
#
# Needs llvm-profdata for the toolchain's LLVM: `rustup component add llvm-tools`, or
# LLVM_PROFDATA=/path/to/llvm-profdata. The training listens on 127.0.0.1 only, and every
# phase stops by itself. The Dockerfile runs this script with `--build-arg PGO=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/pgo
seconds=3
while [ $# -gt 0 ]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "pgo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

host=$(rustc -vV | sed -n 's/^host: //p')
profdata=${LLVM_PROFDATA:-$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata}
if [ ! -x "$profdata" ]; then
  echo "pgo.sh: needs llvm-profdata: rustup component add llvm-tools (or set LLVM_PROFDATA)" >&2
  exit 2
fi

rm -rf "$work/profiles" "$work/build-profiles"
mkdir -p "$work/profiles"

echo "pgo.sh: 1/3 instrumented build" >&2
# Build scripts and proc macros are instrumented too; their counts land in build-profiles
# and are not used.
RUSTFLAGS="-Cprofile-generate=$work/build-profiles" \
  cargo build --release --locked --bin fulcrum --target-dir "$work/gen"

echo "pgo.sh: 2/3 training" >&2
gen=$work/gen/release/fulcrum
# The trainer is built apart (its own target directory, uninstrumented): as an example it
# takes the dev-dependencies, which must not leak into the release build's features.
cargo build --release --locked --example pgo_train --target-dir "$work/train"
"$work/train/release/examples/pgo_train" "$gen" --seconds "$seconds" --profiles "$work/profiles"

echo "pgo.sh: 3/3 build with the profile" >&2
# The plain-HTTP and L4 processes count four times, TLS once. At equal weight TLS's record
# and handshake code more than doubled the hot set (4,131 hot blocks against 2,226), and the
# HTTP path inlined more: 529 I1 misses per L7 request. Weighted, TLS still trains (HTTPS
# keep-alive CPU unchanged) and the HTTP path is back to 446 (docs/performance.md).
inputs=()
for f in "$work"/profiles/*.profraw; do
  case ${f##*/} in
    tls-*) inputs+=("$f") ;;
    *) inputs+=("-weighted-input=4,$f") ;;
  esac
done
# Both kinds must be there, or the weights would weigh nothing (a binary that ignored
# LLVM_PROFILE_FILE, a trainer that skipped a variant).
ls "$work"/profiles/tls-*.profraw >/dev/null && ls "$work"/profiles/plain-*.profraw >/dev/null \
  || { echo "pgo.sh: the training wrote no TLS or no plain profile" >&2; exit 1; }
"$profdata" merge -o "$work/fulcrum.profdata" "${inputs[@]}"
RUSTFLAGS="-Cprofile-use=$work/fulcrum.profdata" \
  cargo build --release --locked --bin fulcrum --target-dir "$work"
echo "pgo.sh: built $work/release/fulcrum" >&2
