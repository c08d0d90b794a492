#!/usr/bin/env bash
# pgo.sh: a profile-guided build of fulcrum (PGO). Three steps:
#   1. an instrumented release build (target/pgo/gen), which counts every branch it takes;
#   2. a training run through it, about two minutes: `compare.py load --quick` over HTTP/1
#      (small and 16 KiB bodies, 50 and 200 connections), h2 and L4, plain and with the access
#      log, 100 routes and a rate limit; then `tls-handshake.sh` for TLS (full handshakes with
#      ECDSA and RSA certificates, resumed handshakes, HTTPS keep-alive);
#   3. the release build that uses the merged profile: target/pgo/release/fulcrum.
# `target/release/fulcrum` is left as it is. Run the result like any build, or measure it:
#   FULCRUM_BIN=target/pgo/release/fulcrum python3 benches/compare.py --no-build load
#
# What the profile buys is in the README ("Performance"). Code the training does not reach
# is optimised as LLVM sees fit without counts, as in a plain build; the training covers the
# request paths the benchmarks measure and TLS.
#
# Needs: what compare.py load and tls-handshake.sh need (wrk, h2load, haproxy, nginx with the
# stream module, openssl, python3, taskset) and llvm-profdata for the toolchain's LLVM:
# `rustup component add llvm-tools`, or LLVM_PROFDATA=/path/to/llvm-profdata.
# The training's processes listen on 127.0.0.1 only, and each load stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/pgo

host=$(rustc -vV | sed -n 's/^host: //p')
profdata=${LLVM_PROFDATA:-$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata}
if [ ! -x "$profdata" ]; then
  echo "pgo.sh: needs llvm-profdata: rustup component add llvm-tools (or set LLVM_PROFDATA)" >&2
  exit 2
fi
for c in wrk h2load haproxy nginx openssl python3 taskset; do
  command -v "$c" >/dev/null || { echo "pgo.sh: needs $c (see benches/compare.py)" >&2; exit 2; }
done

rm -rf "$work/profiles" "$work/build-profiles"
mkdir -p "$work/profiles"

echo "pgo.sh: 1/3 instrumented build" >&2
# Build scripts and proc macros are instrumented too; their counts land in build-profiles
# and are not used.
RUSTFLAGS="-Cprofile-generate=$work/build-profiles" \
  cargo build --release --locked --bin fulcrum --target-dir "$work/gen"

echo "pgo.sh: 2/3 training" >&2
gen=$work/gen/release/fulcrum
export LLVM_PROFILE_FILE="$work/profiles/fulcrum-%p-%m.profraw"
FULCRUM_BIN=$gen python3 benches/compare.py --no-build load --quick \
  --scenarios http-small-c50,http-small-c200,http-16k-c50,h2-small-c20,tcp-small-c50 \
  --targets fulcrum,fulcrum+log,fulcrum+routes,fulcrum+ratelimit
CANDIDATE_NAME=fulcrum CANDIDATE_CMD="$gen run --config {config} --log-level warn" \
  benches/tls-handshake.sh -r 1 -d 3 -t candidate
unset LLVM_PROFILE_FILE
ls "$work"/profiles/fulcrum-*.profraw >/dev/null

echo "pgo.sh: 3/3 build with the profile" >&2
"$profdata" merge -o "$work/fulcrum.profdata" "$work"/profiles/fulcrum-*.profraw
RUSTFLAGS="-Cprofile-use=$work/fulcrum.profdata" \
  cargo build --release --locked --bin fulcrum --target-dir "$work"
echo "pgo.sh: built $work/release/fulcrum" >&2
