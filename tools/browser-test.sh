#!/usr/bin/env bash
# The browser test: builds the web example for wasm32, serves it on 127.0.0.1, and has
# headless Chromium run its self-test (examples/web/app.js with ?test): every transformers
# fixture's outputs, gradients and AdamW steps within 1e-4, inference, a corrupt checkpoint's
# error shown in the page, a few ListOps training steps lowering the loss, and a classifier
# fine-tuned on the bundled reviews.csv (loss down, accuracy 20 points above the majority
# class, the trained folder's config, zip and reloaded predictions; a ragged CSV refused
# naming file and line), all on the browser's WebGPU (SwiftShader here). Exits 0 only when every check passed; a page that
# hangs fails after BROWSER_TEST_TIMEOUT seconds (default 900).
#
# Installs what it needs on first use: Debian's chromium, playwright-core from npm (driving
# that chromium; it never downloads a browser) and the wasm toolchain
# (tools/wasm-toolchain.sh), cached under ~/.cache/roformer-wasm.
# Leaves the page's screenshot in target/browser-test/page.png.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
started=$(date +%s)
cache="${ROFORMER_WASM_CACHE:-$HOME/.cache/roformer-wasm}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! command -v chromium >/dev/null; then
  echo "browser test: installing Debian's chromium"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
playwright_version=1.65.1
if [ ! -f "$cache/node/node_modules/playwright-core/package.json" ] \
  || ! grep -q "\"version\": \"$playwright_version\"" "$cache/node/node_modules/playwright-core/package.json"; then
  echo "browser test: installing playwright-core $playwright_version"
  mkdir -p "$cache/node"
  npm install --prefix "$cache/node" --no-audit --no-fund --silent "playwright-core@$playwright_version"
fi

bash examples/web/build.sh

out="$root/target/browser-test"
mkdir -p "$out"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 -m http.server --bind 127.0.0.1 --directory examples/web "$port" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/index.html')" 2>/dev/null && break
  sleep 0.2
done

echo "== browser test: chromium $(chromium --version | awk '{print $2}') on http://127.0.0.1:$port/ ($(date +%T))"
status=0
NODE_PATH="$cache/node/node_modules" node tools/browser-test.cjs \
  "http://127.0.0.1:$port/index.html?test" "$out/page.png" "${BROWSER_TEST_TIMEOUT:-900}" || status=$?
echo "browser test: $(( $(date +%s) - started )) s in all (build included); screenshot $out/page.png"
exit $status
