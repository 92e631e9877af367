#!/usr/bin/env bash
# The test suite: builds airlock with AddressSanitizer + UndefinedBehaviorSanitizer
# (build-asan/), the Release build with warnings as errors (build-release/), runs every
# fuzz harness for a bounded time (build-fuzz/, clang +
# libFuzzer) and then every unit and integration test with ctest.
# Usage: tests/run.sh   (from anywhere; needs deploy/install-deps.sh to have run)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
fuzz_seconds=${AIRLOCK_FUZZ_SECONDS:-20}

# npm test tools (undici, openai, ...) pinned by tests/package-lock.json
if [ -f tests/package-lock.json ]; then
  (cd tests && npm ci --no-audit --no-fund --loglevel=error)
fi

cmake -S . -B build-asan -DAL_SANITIZE=ON -DAL_WERROR=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$jobs"

# The Release build the quickstart uses: -O2 finds warnings (-Werror) a Debug build does not.
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DAL_WERROR=ON >/dev/null
cmake --build build-release -j"$jobs"

cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DAL_FUZZ=ON -DAL_WERROR=ON \
  -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz -j"$jobs" --target all

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
for f in build-fuzz/tests/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f")
  corpus=tests/fuzz/corpus/$name
  mkdir -p "$corpus"
  work=$(mktemp -d)
  echo "fuzz: $name for ${fuzz_seconds}s"
  # A crashing input is written under build-fuzz/ (git ignores it), not into the
  # checkout's root; its path is in the log tail printed on failure.
  "$f" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
    -artifact_prefix="build-fuzz/$name-" \
    "$work" "$corpus" 2>build-fuzz/$name.log || { tail -50 build-fuzz/$name.log; exit 1; }
  rm -rf "$work"
done

ctest --test-dir build-asan --output-on-failure -j"$jobs" --timeout 600
