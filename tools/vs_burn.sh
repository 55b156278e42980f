#!/usr/bin/env bash
# Ours against the peer on the same adapter, alternately (these machines are noisy):
# Burn 0.22.1 (../shared/tools/burnbench, built outside this crate: copy it, `cargo build
# --release`, ~25 min on 2 cores) and this crate's bench, at burnbench's shapes
# (its README): matmul 256³ and softmax 4096×1024, the 3-layer and the 1-layer step.
#   bash tools/vs_burn.sh /path/to/burnbench-folder [rounds]
set -euo pipefail
burn_dir="${1:?usage: tools/vs_burn.sh BURNBENCH_FOLDER [ROUNDS]}"
rounds="${2:-3}"
cd "$(dirname "$0")/.."
cargo build --release --example bench
bench="$PWD/target/release/examples/bench"
burn="$(cd "$burn_dir" && pwd)/target/release/burnbench"
[ -x "$burn" ] || { echo "no burnbench binary at $burn (build it first)"; exit 1; }
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}" ROFORMER_CACHE_DIR=
out="$(mktemp -d)"
for i in $(seq "$rounds"); do
  (cd "$burn_dir" && "$burn" 0.0625 mm,sm 2>/dev/null | grep '"ops_per_sync":10' | sed "s/^/burn $i | /")
  "$bench" kernels --out "$out/$i" | grep -E '^(matmul A B |softmax forward)' | sed "s/^/ours $i | /"
  (cd "$burn_dir" && "$burn" 0.25 train 2>/dev/null | grep encoder | sed "s/^/burn $i | /")
  "$bench" step --layers 3 --hidden 192 --heads 3 --intermediate 768 --vocab 8000 --batch 2 \
    --seq 128 | grep '^steady' | sed "s/^/ours $i | 3 layers | /"
  (cd "$burn_dir" && "$burn" 0.0625 train 2>/dev/null | grep encoder | sed "s/^/burn $i | /")
  "$bench" step --layers 1 --hidden 64 --heads 1 --intermediate 256 --vocab 1984 --batch 1 \
    --seq 32 | grep '^steady' | sed "s/^/ours $i | 1 layer | /"
done
