// Attention over a key/value cache, for generation with a causal model: each sequence's new
// tokens (a prompt's, then one at a time) attend to every cached position up to their own.
//
// The cache holds each sequence's keys and values `[batch, slots, heads, dim]`, RoPE
// already applied (to values too with `rotary_value`), so a token's key is computed and
// rotated once, at its true position. Row b's new tokens sit at positions starts[b],
// starts[b] + 1, ... (sequences of a batch may be at different lengths), up to `positions`.
// Position n has slot n below `ring_from`; from there on positions take the remaining slots
// in turn (a ring: local attention keeps its global tokens, then only its last window), so
// slot(n) = ring_from + (n - ring_from) % (slots - ring_from). A full cache has
// ring_from = slots = positions: every position its own slot.
//
// append:  cache[b, slot(starts[b] + t)] = x[b, t] rotated by RoPE at that position
//          (rotate = 1) or as it is (rotate = 0); positions at or past `positions` are not
//          written.
//          One thread per pair of features.
// attend:  out[b, t, h] = softmax(scale · q kᵀ) v over the keys at positions
//          0 ..= starts[b] + t, with q (x) rotated at its position on load; for local
//          attention only the last `window` + 1 of them and the first `globals` (the keys
//          visited in that order: the globals below the window, then the window), so a
//          step's work stays flat however long the sequence. One workgroup
//          of WG threads per (b, t, h): the keys stream through in tiles of TILE, each
//          thread scoring one in WG, with an online softmax across tiles (running max m,
//          running sum l); thread i owns the output features i and i + WG.
// x, the cache and out are T (f32, or f16 in the f16 variant); the RoPE table, the scores
// and all arithmetic are f32. Forward only: generation trains nothing.

alias T = f32;

struct Params {
    batch: u32, new_tokens: u32, heads: u32, dim: u32,
    slots: u32, rotate: u32, scale: f32,
    // Local attention: keys at most `window` before the query, and the first `globals`
    // (0xffffffff and 0: every key before it).
    window: u32,
    globals: u32,
    // Positions the cache serves, and the first that shares the ring of slots.
    positions: u32, ring_from: u32, _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [batch, new_tokens, heads, dim]: the new keys or values (append), the queries (attend).
@group(0) @binding(1) var<storage, read> x: array<T>;
// RoPE's [positions, dim] table in HF's layout: sin in column i, cos in column dim/2 + i.
@group(0) @binding(2) var<storage, read> table: array<f32>;
// [batch]: the position of each row's first new token.
@group(0) @binding(3) var<storage, read> starts: array<u32>;
// [batch, slots, heads, dim]: the cache append writes.
@group(0) @binding(4) var<storage, read_write> cache: array<T>;
// The caches attend reads.
@group(0) @binding(5) var<storage, read> keys: array<T>;
@group(0) @binding(6) var<storage, read> values: array<T>;
// [batch, new_tokens, heads, dim].
@group(0) @binding(7) var<storage, read_write> out: array<T>;

const WG: u32 = 64u;
// Keys per tile (4 KiB of scores in workgroup memory).
const TILE: u32 = 1024u;
// Head dimensions up to 2 · WG: each thread owns two output features.
const MAX_D: u32 = 128u;
// f32::MAX in hex: Tint (Chromium) rejects the decimal 3.40282347e38 as not representable.
const F32_MAX: f32 = 0x1.fffffep+127f;

// The slot of position n (see the top).
fn slot(n: u32) -> u32 {
    if (n < p.ring_from) {
        return n;
    }
    return p.ring_from + (n - p.ring_from) % max(p.slots - p.ring_from, 1u);
}

// The pair (x0, x1) of features (2i, 2i + 1) rotated by RoPE at `position`.
fn rotated(x0: f32, x1: f32, position: u32, i: u32) -> vec2<f32> {
    let half = p.dim / 2u;
    // A position past the table's end cannot happen (the host sizes the table to the
    // positions); clamped, it reads a valid row rather than out of bounds.
    let row = min(position, arrayLength(&table) / p.dim - 1u);
    let s = table[row * p.dim + i];
    let c = table[row * p.dim + half + i];
    return vec2<f32>(x0 * c - x1 * s, x1 * c + x0 * s);
}

@compute @workgroup_size(256)
fn append(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let half = p.dim / 2u;
    let idx = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (idx >= p.batch * p.new_tokens * p.heads * half) {
        return;
    }
    let i = idx % half;
    let h = (idx / half) % p.heads;
    let t = (idx / (half * p.heads)) % p.new_tokens;
    let b = idx / (half * p.heads * p.new_tokens);
    let position = starts[b] + t;
    if (position >= p.positions) {
        return;
    }
    let xi = ((b * p.new_tokens + t) * p.heads + h) * p.dim + 2u * i;
    var pair = vec2<f32>(f32(x[xi]), f32(x[xi + 1u]));
    if (p.rotate != 0u) {
        pair = rotated(pair.x, pair.y, position, i);
    }
    let ci = ((b * p.slots + slot(position)) * p.heads + h) * p.dim + 2u * i;
    cache[ci] = T(pair.x);
    cache[ci + 1u] = T(pair.y);
}

var<workgroup> q_sh: array<f32, MAX_D>;
// The last key position, the first of the window and the keys visited, loaded so every
// thread sees them as uniform (the loop over key tiles holds barriers).
var<workgroup> last_sh: u32;
var<workgroup> first_sh: u32;
var<workgroup> count_sh: u32;
var<workgroup> red: array<f32, WG>;
// One tile's scores, then its probabilities.
var<workgroup> probs: array<f32, TILE>;

// The maximum (kind 0) or sum (kind 1) of every thread's v; every thread gets it.
fn reduce(kind: u32, v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            if (kind == 0u) {
                red[li] = max(red[li], red[li + s]);
            } else {
                red[li] = red[li] + red[li + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// The position of the n-th key a query visits: the `below` globals under its window, then
// the window from `first` on.
fn key_position(n: u32, below: u32, first: u32) -> u32 {
    return select(first + n - below, n, n < below);
}

@compute @workgroup_size(64)
fn attend(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let li = lid.x;
    let g = wid.x + wid.y * nwg.x;
    // Uniform across the workgroup: every thread returns, or none does.
    if (g >= p.batch * p.new_tokens * p.heads) {
        return;
    }
    let h = g % p.heads;
    let t = (g / p.heads) % p.new_tokens;
    let b = g / (p.heads * p.new_tokens);
    let position = starts[b] + t;
    if (li == 0u) {
        let last = min(position, p.positions - 1u);
        // The window's first key; below it only the globals are seen.
        let first = last - min(last, p.window);
        last_sh = last;
        first_sh = first;
        count_sh = min(p.globals, first) + last + 1u - first;
    }
    let last = workgroupUniformLoad(&last_sh);
    let first = workgroupUniformLoad(&first_sh);
    let count = workgroupUniformLoad(&count_sh);
    let below = count - (last + 1u - first);
    let half = p.dim / 2u;
    let qi = ((b * p.new_tokens + t) * p.heads + h) * p.dim;
    // The query, rotated at its position, in workgroup memory.
    for (var i = li; i < half; i += WG) {
        let r = rotated(f32(x[qi + 2u * i]), f32(x[qi + 2u * i + 1u]), position, i);
        q_sh[2u * i] = r.x;
        q_sh[2u * i + 1u] = r.y;
    }
    workgroupBarrier();
    var m = -F32_MAX;
    var l = 0.0;
    var acc = vec2<f32>(0.0, 0.0);
    let row_stride = p.heads * p.dim;
    let base = b * p.slots * row_stride + h * p.dim;
    // Tiles of TILE keys: two reductions (max, sum) per tile, whatever its length, so a
    // query over a few hundred keys waits at a handful of barriers.
    for (var tile = 0u; tile < count; tile += TILE) {
        let in_tile = min(TILE, count - tile);
        // Each thread scores its keys (one in WG) into workgroup memory.
        var tile_max = -F32_MAX;
        for (var jj = li; jj < in_tile; jj += WG) {
            let kj = base + slot(key_position(tile + jj, below, first)) * row_stride;
            var dot = 0.0;
            for (var c = 0u; c < p.dim; c++) {
                dot += q_sh[c] * f32(keys[kj + c]);
            }
            let s = p.scale * dot;
            probs[jj] = s;
            tile_max = max(tile_max, s);
        }
        let m_new = max(m, reduce(0u, tile_max, li));
        var tile_sum = 0.0;
        for (var jj = li; jj < in_tile; jj += WG) {
            let pj = exp(probs[jj] - m_new);
            probs[jj] = pj;
            tile_sum += pj;
        }
        let alpha = exp(m - m_new);
        // (reduce's first barrier makes every probability visible to every thread.)
        l = l * alpha + reduce(1u, tile_sum, li);
        acc *= alpha;
        for (var jj = 0u; jj < in_tile; jj++) {
            let vj = base + slot(key_position(tile + jj, below, first)) * row_stride;
            let w = probs[jj];
            if (li < p.dim) {
                acc.x += w * f32(values[vj + li]);
            }
            if (li + WG < p.dim) {
                acc.y += w * f32(values[vj + li + WG]);
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    let oi = ((b * p.new_tokens + t) * p.heads + h) * p.dim;
    if (li < p.dim) {
        out[oi + li] = T(acc.x / l);
    }
    if (li + WG < p.dim) {
        out[oi + li + WG] = T(acc.y / l);
    }
}
