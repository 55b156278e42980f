// Sliding-window ("local") softmax attention with global tokens, without a T x T matrix:
//     out_i = sum_{j in N(i)} softmax_j(scale * q_i . k_j + mask_j) v_j
// where N(i), the keys query i sees, is (w = window, g = globals)
//     not causal: |i - j| <= w, or i < g (a global query sees every key), or j < g;
//     causal:     j <= i, and i - j <= w or j < g (global tokens are only seen).
// q, k, v, out and their gradients share one layout (strides sb, sh, st; features
// contiguous) and one head dimension. RoPE, when used, is applied to q and k beforehand.
//
// Every row's neighbours are two index ranges, [0, pre) then [lo, hi): the global tokens
// before the window, then the window (for a global query: everything). So the work is
// T * (2w + 1 + g) dot products (plus g * T for the global rows), never T * T.
//
// forward:  one invocation per query: an online softmax over its keys (running max m and
//           sum l); saves m and l per query (stats[.., 0..2]).
// bwd_dq:   one invocation per query: D = dout . out (saved in stats[.., 2]), then over its
//           keys P = exp(S - m) / l, dP = dout . v, dS = P (dP - D), dq += scale dS k.
// bwd_dkdv: one invocation per key, over the queries that see it (the same sets,
//           transposed): dv += P dout, dk += scale dS q. Runs after bwd_dq (it reads D).
// No workgroup memory and no barrier: each invocation keeps its row in registers (head
// dimensions up to MAX_D, as MAX_D / 4 vec4s) and each gradient row has one owner.
// The padding mask is additive, as in HuggingFace: a row that sees only padded keys
// (-3.4e38) is uniform over them, as there.
// q, k, v, out and the gradients are T (f32, or f16 in the f16 variant); the mask, stats and
// all arithmetic are f32.

alias T = f32;

struct Params {
    batch: u32, heads: u32, seq: u32, dim: u32,
    sb: u32, sh: u32, st: u32, causal: u32,
    has_mask: u32, scale: f32, window: u32, globals: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [batch, seq] additive mask.
@group(0) @binding(4) var<storage, read> mask: array<f32>;
// [batch, heads, seq, 3]: m and l (written by forward), D (written by bwd_dq).
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;

// Variant constant: the largest head dimension (registers per row: MAX_D / 4 vec4s).
const MAX_D: u32 = 64u; // variant
const D4: u32 = MAX_D / 4u;
const WG: u32 = 64u;
// f32::MAX in hex: Tint (Chromium) rejects the decimal 3.40282347e38 as not representable.
const F32_MAX: f32 = 0x1.fffffep+127f;

// The tensors and their accessors: ld_x(e, c4) is features 4 c4 .. 4 c4 + 3 of the row
// starting at element e (zero past the head dimension). This form reads scalars, for any
// head dimension and strides; the `vec4` variant binds the same tensors as arrays of vec4
// (head dimension and strides multiples of 4): a quarter of the loads.
// variant ACCESS begin
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
@group(0) @binding(6) var<storage, read_write> out: array<T>;
@group(0) @binding(7) var<storage, read> out_saved: array<T>;
@group(0) @binding(8) var<storage, read> grad_out: array<T>;
@group(0) @binding(9) var<storage, read_write> grad_q: array<T>;
@group(0) @binding(10) var<storage, read_write> grad_k: array<T>;
@group(0) @binding(11) var<storage, read_write> grad_v: array<T>;

fn lanes(c4: u32) -> vec4<bool> {
    let c = 4u * c4;
    return vec4<bool>(c < p.dim, c + 1u < p.dim, c + 2u < p.dim, c + 3u < p.dim);
}

fn ld_q(e: u32, c4: u32) -> vec4<f32> {
    let i = e + 4u * c4;
    let on = lanes(c4);
    var x = vec4<f32>(0.0);
    if (on.x) { x.x = f32(q[i]); }
    if (on.y) { x.y = f32(q[i + 1u]); }
    if (on.z) { x.z = f32(q[i + 2u]); }
    if (on.w) { x.w = f32(q[i + 3u]); }
    return x;
}

fn ld_k(e: u32, c4: u32) -> vec4<f32> {
    let i = e + 4u * c4;
    let on = lanes(c4);
    var x = vec4<f32>(0.0);
    if (on.x) { x.x = f32(k[i]); }
    if (on.y) { x.y = f32(k[i + 1u]); }
    if (on.z) { x.z = f32(k[i + 2u]); }
    if (on.w) { x.w = f32(k[i + 3u]); }
    return x;
}

fn ld_v(e: u32, c4: u32) -> vec4<f32> {
    let i = e + 4u * c4;
    let on = lanes(c4);
    var x = vec4<f32>(0.0);
    if (on.x) { x.x = f32(v[i]); }
    if (on.y) { x.y = f32(v[i + 1u]); }
    if (on.z) { x.z = f32(v[i + 2u]); }
    if (on.w) { x.w = f32(v[i + 3u]); }
    return x;
}

fn ld_out_saved(e: u32, c4: u32) -> vec4<f32> {
    let i = e + 4u * c4;
    let on = lanes(c4);
    var x = vec4<f32>(0.0);
    if (on.x) { x.x = f32(out_saved[i]); }
    if (on.y) { x.y = f32(out_saved[i + 1u]); }
    if (on.z) { x.z = f32(out_saved[i + 2u]); }
    if (on.w) { x.w = f32(out_saved[i + 3u]); }
    return x;
}

fn ld_grad_out(e: u32, c4: u32) -> vec4<f32> {
    let i = e + 4u * c4;
    let on = lanes(c4);
    var x = vec4<f32>(0.0);
    if (on.x) { x.x = f32(grad_out[i]); }
    if (on.y) { x.y = f32(grad_out[i + 1u]); }
    if (on.z) { x.z = f32(grad_out[i + 2u]); }
    if (on.w) { x.w = f32(grad_out[i + 3u]); }
    return x;
}

fn st_out(e: u32, c4: u32, x: vec4<f32>) {
    let i = e + 4u * c4;
    let on = lanes(c4);
    if (on.x) { out[i] = T(x.x); }
    if (on.y) { out[i + 1u] = T(x.y); }
    if (on.z) { out[i + 2u] = T(x.z); }
    if (on.w) { out[i + 3u] = T(x.w); }
}

fn st_grad_q(e: u32, c4: u32, x: vec4<f32>) {
    let i = e + 4u * c4;
    let on = lanes(c4);
    if (on.x) { grad_q[i] = T(x.x); }
    if (on.y) { grad_q[i + 1u] = T(x.y); }
    if (on.z) { grad_q[i + 2u] = T(x.z); }
    if (on.w) { grad_q[i + 3u] = T(x.w); }
}

fn st_grad_k(e: u32, c4: u32, x: vec4<f32>) {
    let i = e + 4u * c4;
    let on = lanes(c4);
    if (on.x) { grad_k[i] = T(x.x); }
    if (on.y) { grad_k[i + 1u] = T(x.y); }
    if (on.z) { grad_k[i + 2u] = T(x.z); }
    if (on.w) { grad_k[i + 3u] = T(x.w); }
}

fn st_grad_v(e: u32, c4: u32, x: vec4<f32>) {
    let i = e + 4u * c4;
    let on = lanes(c4);
    if (on.x) { grad_v[i] = T(x.x); }
    if (on.y) { grad_v[i + 1u] = T(x.y); }
    if (on.z) { grad_v[i + 2u] = T(x.z); }
    if (on.w) { grad_v[i + 3u] = T(x.w); }
}
// variant ACCESS end

// Whether chunk c4 holds any feature (the loops run to D4, a constant, so they unroll).
fn live(c4: u32) -> bool {
    return 4u * c4 < p.dim;
}

fn row_at(b: u32, h: u32, t: u32) -> u32 {
    return b * p.sb + h * p.sh + t * p.st;
}

fn stat_at(b: u32, h: u32, t: u32) -> u32 {
    return ((b * p.heads + h) * p.seq + t) * 3u;
}

fn mask_of(b: u32, j: u32) -> f32 {
    if (p.has_mask != 0u) {
        return mask[b * p.seq + j];
    }
    return 0.0;
}

// A row's neighbours: [0, pre) then [lo, hi).
struct Span {
    pre: u32,
    lo: u32,
    hi: u32,
}

// The n-th neighbour (n < pre + hi - lo).
fn nth(s: Span, n: u32) -> u32 {
    return select(s.lo + (n - s.pre), n, n < s.pre);
}

// The keys query i sees.
fn keys_of(i: u32) -> Span {
    if (p.causal == 0u && i < p.globals) {
        return Span(0u, 0u, p.seq);
    }
    let lo = i - min(i, p.window);
    var hi = min(p.seq, i + p.window + 1u);
    if (p.causal != 0u) {
        hi = i + 1u;
    }
    return Span(min(p.globals, lo), lo, hi);
}

// The queries that see key j.
fn queries_of(j: u32) -> Span {
    if (j < p.globals) {
        return Span(0u, select(0u, j, p.causal != 0u), p.seq);
    }
    let hi = min(p.seq, j + p.window + 1u);
    if (p.causal != 0u) {
        return Span(0u, j, hi);
    }
    let lo = j - min(j, p.window);
    return Span(min(p.globals, lo), lo, hi);
}

// (batch, head, position) of this invocation's row, or batch >= p.batch past the end.
fn row_of(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> vec3<u32> {
    let idx = (wid.x + wid.y * nwg.x) * WG + li;
    let t = idx % p.seq;
    let h = (idx / p.seq) % p.heads;
    return vec3<u32>(idx / (p.seq * p.heads), h, t);
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let r = row_of(wid, nwg, li);
    let b = r.x;
    let h = r.y;
    let i = r.z;
    if (b >= p.batch) {
        return;
    }
    let qe = row_at(b, h, i);
    var qv: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    for (var c4 = 0u; c4 < D4; c4++) {
        if (live(c4)) {
            qv[c4] = ld_q(qe, c4) * p.scale;
        }
        acc[c4] = vec4<f32>(0.0);
    }
    var m = -F32_MAX;
    var l = 0.0;
    let s = keys_of(i);
    let n_keys = s.pre + (s.hi - s.lo);
    for (var n = 0u; n < n_keys; n++) {
        let j = nth(s, n);
        let ke = row_at(b, h, j);
        var dot4 = vec4<f32>(0.0);
        for (var c4 = 0u; c4 < D4; c4++) {
            if (live(c4)) {
                dot4 += qv[c4] * ld_k(ke, c4);
            }
        }
        let sc = (dot4.x + dot4.y) + (dot4.z + dot4.w) + mask_of(b, j);
        let m_new = max(m, sc);
        let alpha = exp(m - m_new);
        let pj = exp(sc - m_new);
        l = alpha * l + pj;
        m = m_new;
        for (var c4 = 0u; c4 < D4; c4++) {
            if (live(c4)) {
                acc[c4] = alpha * acc[c4] + pj * ld_v(ke, c4);
            }
        }
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var c4 = 0u; c4 < D4; c4++) {
        if (live(c4)) {
            st_out(qe, c4, acc[c4] * inv);
        }
    }
    let st = stat_at(b, h, i);
    stats[st] = m;
    stats[st + 1u] = l;
}

@compute @workgroup_size(WG)
fn bwd_dq(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let r = row_of(wid, nwg, li);
    let b = r.x;
    let h = r.y;
    let i = r.z;
    if (b >= p.batch) {
        return;
    }
    let qe = row_at(b, h, i);
    var qv: array<vec4<f32>, D4>;
    var gv: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    var d4 = vec4<f32>(0.0);
    for (var c4 = 0u; c4 < D4; c4++) {
        if (live(c4)) {
            qv[c4] = ld_q(qe, c4) * p.scale;
            gv[c4] = ld_grad_out(qe, c4);
            d4 += gv[c4] * ld_out_saved(qe, c4);
        }
        acc[c4] = vec4<f32>(0.0);
    }
    let dd = (d4.x + d4.y) + (d4.z + d4.w);
    let st = stat_at(b, h, i);
    let m = stats[st];
    let inv_l = 1.0 / stats[st + 1u];
    stats[st + 2u] = dd;
    let s = keys_of(i);
    let n_keys = s.pre + (s.hi - s.lo);
    for (var n = 0u; n < n_keys; n++) {
        let j = nth(s, n);
        let ke = row_at(b, h, j);
        var kv: array<vec4<f32>, D4>;
        var dot4 = vec4<f32>(0.0);
        var dp4 = vec4<f32>(0.0);
        for (var c4 = 0u; c4 < D4; c4++) {
            if (live(c4)) {
                kv[c4] = ld_k(ke, c4);
                dot4 += qv[c4] * kv[c4];
                dp4 += gv[c4] * ld_v(ke, c4);
            }
        }
        let sc = (dot4.x + dot4.y) + (dot4.z + dot4.w) + mask_of(b, j);
        let pr = exp(sc - m) * inv_l;
        let ds = pr * ((dp4.x + dp4.y) + (dp4.z + dp4.w) - dd);
        for (var c4 = 0u; c4 < D4; c4++) {
            if (live(c4)) {
                acc[c4] += ds * kv[c4];
            }
        }
    }
    for (var c4 = 0u; c4 < D4; c4++) {
        if (live(c4)) {
            st_grad_q(qe, c4, acc[c4] * p.scale);
        }
    }
}

@compute @workgroup_size(WG)
fn bwd_dkdv(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let r = row_of(wid, nwg, li);
    let b = r.x;
    let h = r.y;
    let j = r.z;
    if (b >= p.batch) {
        return;
    }
    let ke = row_at(b, h, j);
    var kv: array<vec4<f32>, D4>;
    var vv: array<vec4<f32>, D4>;
    var dk: array<vec4<f32>, D4>;
    var dv: array<vec4<f32>, D4>;
    for (var c4 = 0u; c4 < D4; c4++) {
        if (live(c4)) {
            kv[c4] = ld_k(ke, c4) * p.scale;
            vv[c4] = ld_v(ke, c4);
        }
        dk[c4] = vec4<f32>(0.0);
        dv[c4] = vec4<f32>(0.0);
    }
    let mj = mask_of(b, j);
    let s = queries_of(j);
    let n_queries = s.pre + (s.hi - s.lo);
    for (var n = 0u; n < n_queries; n++) {
        let i = nth(s, n);
        let qe = row_at(b, h, i);
        var qv: array<vec4<f32>, D4>;
        var gv: array<vec4<f32>, D4>;
        var dot4 = vec4<f32>(0.0);
        var dp4 = vec4<f32>(0.0);
        for (var c4 = 0u; c4 < D4; c4++) {
            if (live(c4)) {
                qv[c4] = ld_q(qe, c4);
                gv[c4] = ld_grad_out(qe, c4);
                dot4 += qv[c4] * kv[c4];
                dp4 += gv[c4] * vv[c4];
            }
        }
        let st = stat_at(b, h, i);
        let sc = (dot4.x + dot4.y) + (dot4.z + dot4.w) + mj;
        let pr = exp(sc - stats[st]) / stats[st + 1u];
        let ds = pr * ((dp4.x + dp4.y) + (dp4.z + dp4.w) - stats[st + 2u]);
        for (var c4 = 0u; c4 < D4; c4++) {
            if (live(c4)) {
                dv[c4] += pr * gv[c4];
                dk[c4] += ds * qv[c4];
            }
        }
    }
    for (var c4 = 0u; c4 < D4; c4++) {
        if (live(c4)) {
            st_grad_k(ke, c4, dk[c4] * p.scale);
            st_grad_v(ke, c4, dv[c4]);
        }
    }
}
