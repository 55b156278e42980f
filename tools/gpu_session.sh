#!/usr/bin/env bash
# The GPU measurements of issues 5-7, batched for the GPU machine (see PERF.md). Every file
# lands under $OUT. Build and stage here first:
#
#   cargo build --release --example bench --example lra_speed --example info --example train
#   strip target/release/examples/{bench,lra_speed,info,train}
#   ../shared/device/prepare.sh target/release/examples/{bench,lra_speed,info,train}
#
# then, through the device tool with carry [".device"], one part per call:
#
#   bash tools/gpu_session.sh kernels   # info, PyTorch at the bench's shapes, the kernel table,
#                                       # the BERT-base step (f32 and tensor cores), bench_torch.py
#   bash tools/gpu_session.sh lra       # LRA Table 2: speed and memory against length
#   bash tools/gpu_session.sh listops linear|softmax [SECONDS]
#                                       # ListOps at LRA's setting, stopped after SECONDS (default
#                                       # 500); carry $OUT/listops-ATTN back as runs/listops-ATTN
#                                       # (add it to carry) to go on with --resume next call
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder to write into}"
on() { bash .device/on-device.sh "$@"; }
bin=.device/bin

case "${1:-}" in
kernels)
  on $bin/info > "$OUT/info.txt" 2>&1
  on python3 tools/bench_torch_kernels.py > "$OUT/torch_kernels.jsonl" 2> "$OUT/torch_kernels.err"
  on $bin/bench --out "$OUT/bench" --torch "$OUT/torch_kernels.jsonl" > "$OUT/bench.txt" 2>&1
  on $bin/bench step --steps 5 > "$OUT/step_f32.txt" 2>&1
  # each kernel family measured beside the cost model's H200 prediction (issue 18)
  on $bin/bench step --steps 5 --profile --model h200 > "$OUT/step_f32_profile.txt" 2>&1
  on $bin/bench step --steps 5 --precision fast > "$OUT/step_fast.txt" 2>&1
  on $bin/bench step --steps 5 --attention fused > "$OUT/step_fused.txt" 2>&1
  # The anchors, right after ours on the same machine.
  on python3 .device/bench_torch.py > "$OUT/torch_anchors.jsonl" 2> "$OUT/torch_anchors.err"
  tail -n 40 "$OUT"/bench.txt "$OUT"/step_*.txt
  ;;
lra)
  on $bin/lra_speed --lengths 1024,2048,3072,4096,8192,16384 --batch 32 --steps 3 \
    --out "$OUT/lra" > "$OUT/lra.txt" 2>&1
  tail -n 30 "$OUT/lra.txt"
  ;;
listops)
  attn="${2:?listops needs linear or softmax}"
  run="$OUT/listops-$attn"
  mkdir -p "$run"
  # A run carried back from an earlier call continues; otherwise a new one starts.
  [ -d "runs/listops-$attn" ] && cp -r "runs/listops-$attn/." "$run/"
  timeout -s INT "${3:-500}" bash .device/on-device.sh $bin/train --preset lra \
    --attention "$attn" --out "$run" --resume > "$OUT/listops-$attn.txt" 2>&1
  tail -n 20 "$OUT/listops-$attn.txt"
  ;;
*)
  sed -n '2,18p' "$0"
  exit 2
  ;;
esac
