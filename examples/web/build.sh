#!/usr/bin/env bash
# Builds the browser example into examples/web/pkg/ (the wasm module, its JS glue and the
# fixtures the page loads); with --serve, then serves examples/web/ on 127.0.0.1:8000
# (PORT=... for another port). From the repository root:
#
#   bash examples/web/build.sh --serve      # then open http://127.0.0.1:8000/
#
# Users' route: rustup's wasm32 target (`rustup target add wasm32-unknown-unknown`) and
# `cargo install wasm-bindgen-cli --version <the lockfile's wasm-bindgen>`. Where rustup
# has no wasm32 target (CI, machines that cannot download it) tools/wasm-toolchain.sh
# provides both from Debian packages.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
web="$root/examples/web"
cd "$root"

# Its own target folder: the wasm toolchain's compiler would rebuild the native one's.
export CARGO_TARGET_DIR="${WASM_TARGET_DIR:-${CARGO_TARGET_DIR:-$root/target}/wasm}"
if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
  && command -v wasm-bindgen >/dev/null; then
  cargo_wasm="cargo"
  export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="--cfg=web_sys_unstable_apis"
else
  . "$root/tools/wasm-toolchain.sh"
  cargo_wasm="$WASM_CARGO"
fi

echo "== building the wasm module ($(date +%T))"
$cargo_wasm build --release --locked -p roformer-web --target wasm32-unknown-unknown
rm -rf "$web/pkg"
wasm-bindgen --target web --no-typescript --out-dir "$web/pkg" \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/roformer_web.wasm"

# The page loads fixtures by name from pkg/fixtures/ (listed in fixtures.json), and one
# corrupt checkpoint for the bad-input check (the first 100 bytes of a real one).
mkdir -p "$web/pkg/fixtures"
names=()
for config in tests/fixtures/*.config.json; do
  name="$(basename "$config" .config.json)"
  cp "$config" "$web/pkg/fixtures/"
  cp "tests/fixtures/$name.safetensors" "$web/pkg/fixtures/"
  names+=("\"$name\"")
done
(IFS=,; echo "[${names[*]}]") > "$web/pkg/fixtures/fixtures.json"
head -c 100 tests/fixtures/roformer_tiny_cls.safetensors > "$web/pkg/fixtures/corrupt.safetensors"
# The fine-tuning section's bundled model: a tiny classifier (2 layers x 32, labels neg, neu,
# pos) with its WordPiece tokenizer, listed in files.json; its data is data/reviews.csv.
rm -rf "$web/pkg/tiny-classifier" && mkdir -p "$web/pkg/tiny-classifier"
model_files=()
for f in tests/fixtures/trainer/text_classification/initial/*; do
  cp "$f" "$web/pkg/tiny-classifier/"
  model_files+=("\"$(basename "$f")\"")
done
(IFS=,; echo "[${model_files[*]}]") > "$web/pkg/tiny-classifier/files.json"
echo "== built $(du -sh "$web/pkg" | cut -f1) into examples/web/pkg ($(date +%T))"

if [ "${1:-}" = "--serve" ]; then
  port="${PORT:-8000}"
  echo "serving examples/web on http://127.0.0.1:$port/ (Ctrl-C stops)"
  exec python3 -m http.server --bind 127.0.0.1 --directory "$web" "$port"
fi
