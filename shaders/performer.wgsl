// Performer's FAVOR+ feature map (Choromanski et al. 2020, positive random features), the
// part of Performer attention that is not linear attention: for a d-vector x (a query or a
// key, already rotated by RoPE) and the m rows w_i of a random projection,
//
//     phi_i(x) = exp(w_i . x' - |x'|^2 / 2) / sqrt(m),    x' = x d^(-1/4),
//
// so that E[phi(q) . phi(k)] = exp(q . k / sqrt(d)), softmax attention's kernel. The
// products w_i . x' come from a matmul (the host runs it into `feat`, which these kernels
// then map in place). Causal, the features feed the chunked linear attention kernels as
// they are; non-causal, matmuls take the sums, and the last three entry points here are
// their elementwise parts (see `augment`).
//
// Stabilisers. exp overflows long before the features mean anything, so each is scaled by a
// constant that cancels exactly in the attention, out_m = phi(q_m) S / phi(q_m) . z:
// - a query's features by exp(-max_i(w_i . x' - |x'|^2/2)), its own: out_m does not change
//   when phi(q_m) is scaled, so this is exact, and it makes the largest feature 1/sqrt(m).
//   |x'|^2/2 is common to the row and cancels against it, so it is not computed;
// - every key of one (sequence, head) by the same exp(-max), the largest exponent over its
//   keys that are not padding: scaling all of S and z together changes nothing either.
//   Padding keys get features 0 (they would be weighted 0 anyway, and their exp could
//   overflow where the stabiliser does not cover them).
// An f64 reference without stabilisers (performer.rs) holds the kernels to this.
//
// Backward, from g_i = dL/dphi_i (what the linear attention kernels return) and phi itself,
// with the stabilisers held constant (their derivatives cancel for the same reason):
//     dL/dx = d^(-1/4) (sum_i g_i phi_i w_i - s x'),   s = sum_i g_i phi_i,
// the s x' term coming from |x'|^2/2 (for a query s is 0 up to rounding, its scale being
// free; it is kept so one formula serves both). `feature_grads` writes g_i phi_i in place
// over g and -d^(-1/2) s x into `grad_x`; the host's matmul then adds d^(-1/4) (g phi) W.
//
// Rows: one d-vector (and its m features) per (b, h, t), at row b rb + h rh + t rt of x
// (d wide) and of feat (m wide), in the caller's head layout. One invocation per row, or per
// feature for the elementwise pass: no workgroup memory but in the key maximum's tree.
// Everything is f32 (the features span orders of magnitude f16 does not hold).

struct Params {
    batch: u32, heads: u32, seq: u32, dim: u32,
    features: u32, rb: u32, rh: u32, rt: u32,
    has_mask: u32, scale: f32, ratio: f32, dim_v: u32,
    eps: f32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [rows, dim]: the (rotated) queries or keys.
@group(0) @binding(1) var<storage, read> x: array<f32>;
// [rows, features]: w_i . x' from the matmul, mapped in place to the features.
@group(0) @binding(2) var<storage, read_write> feat: array<f32>;
// [batch, seq]: key weights, 1 for tokens, 0 for padding.
@group(0) @binding(3) var<storage, read> mask: array<f32>;
// [batch * heads * seq]: each key's largest exponent (padding: -F32_MAX), by (b, h, t).
@group(0) @binding(4) var<storage, read_write> key_rows: array<f32>;
// [batch * heads]: the keys' stabiliser.
@group(0) @binding(5) var<storage, read_write> key_max: array<f32>;
// Backward: [rows, features] dL/dphi, turned into g phi in place; [rows, dim] dL/dx's part.
@group(0) @binding(6) var<storage, read_write> grad_feat: array<f32>;
@group(0) @binding(7) var<storage, read_write> grad_x: array<f32>;
// Non-causal: v, out and its gradient (rows of dim_v, like x's), and [batch, heads, seq,
// w] arrays, w = dim_v + 1 rounded up to a multiple of 4 (so the matmuls read vec4s; the
// columns past dim_v + 1 are 0): v with a column of ones (`values`), and phi(q) [S | z],
// each query's numerators and normaliser (`sums`; the backward pass overwrites them with
// their gradients).
@group(0) @binding(8) var<storage, read> v: array<f32>;
@group(0) @binding(9) var<storage, read_write> out: array<f32>;
@group(0) @binding(10) var<storage, read> grad_out: array<f32>;
@group(0) @binding(11) var<storage, read_write> values: array<f32>;
@group(0) @binding(12) var<storage, read_write> sums: array<f32>;

// f32::MAX in hex (see lib/rows.wgsl).
const F32_MAX: f32 = 0x1.fffffep+127f;
// Threads of the key maximum's workgroup.
const WG: u32 = 64u;

var<workgroup> sh_max: array<f32, WG>;

// The row of (b, h, t) for flat index ((b heads) + h) seq + t, and that index's parts.
fn bht(idx: u32) -> vec3<u32> {
    return vec3<u32>(idx / (p.heads * p.seq), (idx / p.seq) % p.heads, idx % p.seq);
}

fn row_of(c: vec3<u32>) -> u32 {
    return c.x * p.rb + c.y * p.rh + c.z * p.rt;
}

fn key_weight(b: u32, t: u32) -> f32 {
    if (p.has_mask != 0u) {
        return mask[b * p.seq + t];
    }
    return 1.0;
}

fn flat_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

// Queries: phi_i = exp(w_i . x' - max_j w_j . x') / sqrt(m), one invocation per row.
@compute @workgroup_size(256)
fn map_queries(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = flat_id(wid, nwg, lid);
    if (idx >= p.batch * p.heads * p.seq) {
        return;
    }
    let base = row_of(bht(idx)) * p.features;
    var top = -F32_MAX;
    for (var i = 0u; i < p.features; i++) {
        top = max(top, feat[base + i]);
    }
    for (var i = 0u; i < p.features; i++) {
        feat[base + i] = exp(feat[base + i] - top) * p.ratio;
    }
}

// Keys, first pass: the exponents w_i . x' - |x'|^2/2 in place, and each key's largest
// (-F32_MAX for padding, which the stabiliser ignores), one invocation per row.
@compute @workgroup_size(256)
fn key_exponents(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = flat_id(wid, nwg, lid);
    if (idx >= p.batch * p.heads * p.seq) {
        return;
    }
    let c = bht(idx);
    let row = row_of(c);
    var sq = 0.0;
    for (var j = 0u; j < p.dim; j++) {
        let v = x[row * p.dim + j];
        sq += v * v;
    }
    // |x'|^2 / 2 = d^(-1/2) |x|^2 / 2
    let half_sq = 0.5 * p.scale * p.scale * sq;
    let base = row * p.features;
    var top = -F32_MAX;
    for (var i = 0u; i < p.features; i++) {
        let u = feat[base + i] - half_sq;
        feat[base + i] = u;
        top = max(top, u);
    }
    key_rows[idx] = select(-F32_MAX, top, key_weight(c.x, c.z) != 0.0);
}

// Keys, second pass: the largest exponent over each (b, h)'s keys, one workgroup each
// (0 when every key is padding: its features are all 0 then).
@compute @workgroup_size(WG)
fn key_maximum(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let bh = wid.x + wid.y * nwg.x;
    if (bh >= p.batch * p.heads) {
        return;
    }
    var top = -F32_MAX;
    for (var t = li; t < p.seq; t += WG) {
        top = max(top, key_rows[bh * p.seq + t]);
    }
    sh_max[li] = top;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half /= 2u) {
        if (li < half) {
            sh_max[li] = max(sh_max[li], sh_max[li + half]);
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        key_max[bh] = select(0.0, sh_max[0], sh_max[0] > -F32_MAX);
    }
}

// Keys, third pass: phi_i = w exp(u_i - max) / sqrt(m), one invocation per feature.
@compute @workgroup_size(256)
fn map_keys(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = flat_id(wid, nwg, lid);
    if (e >= p.batch * p.heads * p.seq * p.features) {
        return;
    }
    let idx = e / p.features;
    let c = bht(idx);
    let at = row_of(c) * p.features + e % p.features;
    var f = 0.0;
    if (key_weight(c.x, c.z) != 0.0) {
        f = exp(feat[at] - key_max[c.x * p.heads + c.y]) * p.ratio;
    }
    feat[at] = f;
}

// Backward, per row: g_i phi_i in place over g, and grad_x = -d^(-1/2) s x with
// s = sum_i g_i phi_i (the host's matmul adds d^(-1/4) (g phi) W to it).
@compute @workgroup_size(256)
fn feature_grads(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = flat_id(wid, nwg, lid);
    if (idx >= p.batch * p.heads * p.seq) {
        return;
    }
    let row = row_of(bht(idx));
    let base = row * p.features;
    var s = 0.0;
    for (var i = 0u; i < p.features; i++) {
        let gp = grad_feat[base + i] * feat[base + i];
        grad_feat[base + i] = gp;
        s += gp;
    }
    let k = -p.scale * p.scale * s;
    for (var j = 0u; j < p.dim; j++) {
        grad_x[row * p.dim + j] = k * x[row * p.dim + j];
    }
}

// Non-causal attention over the features is three matmuls per direction on [v | 1]:
//     [S | z] = phi(k)^T [v | 1],   [num | den] = phi(q) [S | z],   out = num / (den + eps)
// ([v | 1] padded with zero columns, which stay zero throughout)
// and backward, from G = [g / den | -(g . out) / den] (`grad_sums`, over `sums`):
//     dphi(q) = G [S | z]^T,   d[S | z] = phi(q)^T G,   dphi(k) = [v | 1] d[S | z]^T,
//     dv = phi(k) dS.
// Padding keys have features 0, so they add nothing and get no gradient.

// The width of the non-causal arrays' rows.
fn sums_width() -> u32 {
    return (p.dim_v + 4u) / 4u * 4u;
}

// values = [v | 1 | 0 ...], one invocation per element.
@compute @workgroup_size(256)
fn augment(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = flat_id(wid, nwg, lid);
    let w = sums_width();
    if (e >= p.batch * p.heads * p.seq * w) {
        return;
    }
    let c = e % w;
    var x = select(0.0, 1.0, c == p.dim_v);
    if (c < p.dim_v) {
        x = v[row_of(bht(e / w)) * p.dim_v + c];
    }
    values[e] = x;
}

// out = num / (den + eps), one invocation per element of out.
@compute @workgroup_size(256)
fn normalise(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = flat_id(wid, nwg, lid);
    if (e >= p.batch * p.heads * p.seq * p.dim_v) {
        return;
    }
    let idx = e / p.dim_v;
    let c = e % p.dim_v;
    let at = idx * sums_width();
    out[row_of(bht(idx)) * p.dim_v + c] = sums[at + c] / (sums[at + p.dim_v] + p.eps);
}

// sums = [g / den | -(g . out) / den | 0 ...] (den with eps), one invocation per query.
@compute @workgroup_size(256)
fn grad_sums(@builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = flat_id(wid, nwg, lid);
    if (idx >= p.batch * p.heads * p.seq) {
        return;
    }
    let row = row_of(bht(idx)) * p.dim_v;
    let at = idx * sums_width();
    let den = sums[at + p.dim_v] + p.eps;
    var s = 0.0;
    for (var c = 0u; c < p.dim_v; c++) {
        let g = grad_out[row + c];
        s += g * out[row + c];
        sums[at + c] = g / den;
    }
    sums[at + p.dim_v] = -s / den;
    for (var c = p.dim_v + 1u; c < sums_width(); c++) {
        sums[at + c] = 0.0;
    }
}
