#!/usr/bin/env bash
# Runs every fuzz target of the broker for FUZZ_SECONDS each (default 60), one after the other,
# starting from the checked-in seeds (seeds/<target>) and a scratch corpus (corpus/<target>,
# kept between local runs). A crash fails the run; libFuzzer leaves the input in
# artifacts/<target>/ and prints the command that replays it.
#
#   bash broker/fuzz/run.sh                     # 60 s per target (what CI runs)
#   FUZZ_SECONDS=3600 bash broker/fuzz/run.sh   # an hour per target
#   cd broker/fuzz && cargo +nightly fuzz run connection -- -fork=2   # until stopped
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-60}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "broker/fuzz/run.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "broker/fuzz/run.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo +nightly fuzz build
summary=()
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  echo "== fuzz $target for ${secs}s"
  if ! cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
      -max_total_time="$secs" -timeout=30 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed: see above and broker/fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)
  summary+=("$target: $runs executions, $rate/s, $cov, no crash")
  rm -f "$log"
done
echo "== fuzzing summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
