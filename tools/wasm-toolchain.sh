#!/usr/bin/env bash
# Sourced (`. tools/wasm-toolchain.sh`): makes a Rust toolchain that builds for
# wasm32-unknown-unknown available in this shell, installing it once into a cache folder.
#
# Users take the ordinary route (`rustup target add wasm32-unknown-unknown`; see
# examples/web/README.md). This is how CI and machines whose rustup cannot download the
# wasm32 target get there, from Debian packages alone: bookworm-security's `rustc-web`
# compiler with its own standard library source (`rust-web-src`), unpacked with `dpkg -x`
# into the cache (installing `rustc-web` system-wide would replace /usr/bin/rustc), and
# the standard library built for wasm32 by cargo's `-Zbuild-std`. Only the compiler that
# matches the source works. The linker is LLVM's `wasm-ld` (package lld-22).
#
# After sourcing: `$WASM_CARGO build` builds for the web (it is `cargo` with RUSTC set and
# the build-std flags), and `wasm-bindgen` is on PATH at the version the lockfile names.
set -euo pipefail

wasm_cache="${ROFORMER_WASM_CACHE:-$HOME/.cache/roformer-wasm}"
wasm_root="$wasm_cache/rustc-web"
wasm_sudo=""
[ "$(id -u)" -eq 0 ] || wasm_sudo="sudo"

if ! LD_LIBRARY_PATH="$wasm_root/usr/lib/x86_64-linux-gnu" "$wasm_root/usr/bin/rustc" --version >/dev/null 2>&1; then
  echo "wasm toolchain: installing rustc-web into $wasm_root (once)"
  # The compiler's shared libraries and the wasm linker come from ordinary packages.
  if ! dpkg -s libllvm22 lld-22 libgit2-1.5 >/dev/null 2>&1; then
    $wasm_sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $wasm_sudo apt-get install -y -qq libllvm22 lld-22 libgit2-1.5 >/dev/null
  fi
  wasm_debs="$(mktemp -d)"
  wasm_fetch() {
    # The standard library package is versioned (libstd-rust-web-1.96): ask its -dev package.
    local std
    std="$(apt-cache depends libstd-rust-web-dev | awk '/Depends: libstd-rust-web-1/ {print $2; exit}')"
    [ -n "$std" ] && (cd "$wasm_debs" && apt-get download -qq rustc-web rust-web-src libstd-rust-web-dev "$std")
  }
  # apt's lists may be missing or stale on a fresh machine: update once and retry.
  wasm_fetch 2>/dev/null || { $wasm_sudo apt-get update -qq && wasm_fetch; }
  rm -rf "$wasm_root" && mkdir -p "$wasm_root"
  for deb in "$wasm_debs"/*.deb; do dpkg -x "$deb" "$wasm_root"; done
  rm -rf "$wasm_debs"
fi

export RUSTC="$wasm_root/usr/bin/rustc"
export RUSTDOC="$wasm_root/usr/bin/rustdoc"
export LD_LIBRARY_PATH="$wasm_root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=/usr/lib/llvm-22/bin/wasm-ld
# rustc-web is a stable compiler; build-std needs cargo's and rustc's unstable flags.
export RUSTC_BOOTSTRAP=1
# wgpu's WebGPU backend on wasm32 (web_sys_unstable_apis: WebGPU's bindings in web-sys).
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="--cfg=web_sys_unstable_apis"
WASM_CARGO="cargo -Zbuild-std=std,panic_abort"
export WASM_CARGO
"$RUSTC" --version

# wasm-bindgen's command line must match the wasm-bindgen crate's version exactly.
wasm_bindgen_version="$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' "${WASM_LOCKFILE:-Cargo.lock}")"
wasm_bindgen_bin="$wasm_cache/wasm-bindgen-$wasm_bindgen_version"
if [ ! -x "$wasm_bindgen_bin/bin/wasm-bindgen" ]; then
  echo "wasm toolchain: building wasm-bindgen-cli $wasm_bindgen_version (once)"
  # rustup's own compiler builds it (a native program).
  env -u RUSTC -u RUSTDOC -u RUSTC_BOOTSTRAP cargo install -q --root "$wasm_bindgen_bin" \
    wasm-bindgen-cli --version "$wasm_bindgen_version"
fi
export PATH="$wasm_bindgen_bin/bin:$PATH"
wasm-bindgen --version
