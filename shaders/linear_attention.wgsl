// Linear attention (Katharopoulos et al. 2020) with the feature map phi(x) = elu(x) + 1,
// plain or with rotary position embedding as in RoFormer eq. (19), causal or not.
// Per batch b and head h, with fq_m = phi(q_m), fk_n = w_n phi(k_n) (w_n: key mask, 0 on
// padding), a_m = R_m fq_m and b_n = R_n fk_n (a = fq, b = fk without RoPE):
//
//     out_m = a_m^T S_m / (fq_m . z_m + eps),   S_m = sum_n b_n v_n^T,  z_m = sum_n fk_n
//
// with the sums over every n, or over n <= m when causal. The numerator uses the rotated
// features, the normaliser the unrotated ones (eq. 19). Nothing T x T is ever formed: the
// state S is d x dv.
//
// Gradients, with g_m = dL/dout_m, dnum_m = g_m / den_m, dden_m = -(g_m . out_m) / den_m:
//     dq_m = phi'(q_m) (R_m^T S_m dnum_m + dden_m z_m)
//     dk_n = w_n phi'(k_n) (R_n^T U_n v_n + y_n),   U_n = sum_m a_m dnum_m^T,  y_n = sum_m dden_m fq_m
//     dv_n = U_n^T b_n
// with U and y summed over every m, or over m >= n when causal (a reverse scan).
//
// Non-causal, the sums S, z (forward, dq) and U, y (dk, dv) are over every token: they are
// summed first, chunk by chunk in parallel (sum_s, sum_u: one workgroup per (b, h, chunk),
// partial sums to `state_out`, then added up in a fixed order by reduce's sum_rows into
// `state`), and the *_chunk entry points then emit their chunk's tokens from the summed
// state, one workgroup per (b, h, chunk). Causal, forward and backward_q/k/v scan a whole
// (b, h) each.
//
// One thread per output feature keeps its row or column of the state in registers (as
// vec4s: 4-wide arithmetic, and a quarter of the dynamically indexed elements, which Mesa's
// GL path compiles very slowly); tokens are staged BT at a time through workgroup memory,
// zero-padded to a multiple of 4. The chunked causal form for long sequences is tested
// against this one.
//
// With `mapped` set, q and k are already features (Performer's random features, say):
// phi is the identity and there is no RoPE (the host checks), so the kernels compute the
// same sums over them as they are.
//
// q, k, v, out and their gradients are T (f32, or f16 in the f16 variant); the RoPE table,
// mask, features, states and all arithmetic are f32.

alias T = f32;

struct Params {
    batch: u32, heads: u32, seq: u32, dim: u32,
    dim_v: u32, qb: u32, qh: u32, qt: u32,
    vb: u32, vh: u32, vt: u32, mapped: u32,
    has_mask: u32, has_rope: u32, eps: f32, chunk_len: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
// [positions, dim]: sin(theta_i) in column i, cos(theta_i) in column dim/2 + i.
@group(0) @binding(4) var<storage, read> table: array<f32>;
// [batch, seq] key weights (1 = token, 0 = padding).
@group(0) @binding(5) var<storage, read> mask: array<f32>;
// [batch, heads, seq, 2]: den (written by forward), dden (written by backward_prep).
@group(0) @binding(6) var<storage, read_write> tok: array<f32>;
// forward's result; backward_prep reads it back.
@group(0) @binding(7) var<storage, read_write> out: array<T>;
@group(0) @binding(8) var<storage, read> out_saved: array<T>;
// The loss's gradient with respect to out, and the gradients the backward passes write.
@group(0) @binding(9) var<storage, read> grad_out: array<T>;
@group(0) @binding(10) var<storage, read_write> grad_q: array<T>;
@group(0) @binding(11) var<storage, read_write> grad_k: array<T>;
@group(0) @binding(12) var<storage, read_write> grad_v: array<T>;
// Non-causal: per (b, h), a d x dv matrix row-major then a d-vector (S and z, or U and y):
// summed (`state`), or one chunk's part (`state_out`, [chunk][b][h][...]).
@group(0) @binding(13) var<storage, read> state: array<f32>;
@group(0) @binding(14) var<storage, read_write> state_out: array<f32>;

// Largest head dimension of this variant (32, 64, 128 or 256), also the workgroup size.
const MAX_D: u32 = 128u; // variant
const MAX_D4: u32 = MAX_D / 4u;
// Tokens staged per block (4 in the widest variant, so its staging fits as much workgroup
// memory as the 128-wide one's).
const BT: u32 = 8u; // variant

var<workgroup> sh_a: array<f32, BT * MAX_D>;
var<workgroup> sh_b: array<f32, BT * MAX_D>;
var<workgroup> sh_fq: array<f32, BT * MAX_D>;
var<workgroup> sh_fk: array<f32, BT * MAX_D>;
var<workgroup> sh_v: array<f32, BT * MAX_D>;
var<workgroup> sh_dnum: array<f32, BT * MAX_D>;
var<workgroup> sh_tok: array<f32, BT>;

// This thread's row or column of the d x dv state (S or U), and the forward's z, in vec4s
// zero-padded. Module-scope, so the per-token helpers read them in place (an array passed
// by value is copied at every call, which llvmpipe pays in memory traffic).
var<private> st: array<vec4<f32>, MAX_D4>;
var<private> st_z: array<vec4<f32>, MAX_D4>;

// The feature map: elu(x) + 1, or the identity for features mapped already.
fn phi(x: f32) -> f32 {
    if (p.mapped != 0u) {
        return x;
    }
    return select(exp(x), x + 1.0, x > 0.0);
}

fn dphi(x: f32) -> f32 {
    if (p.mapped != 0u) {
        return 1.0;
    }
    return select(exp(x), 1.0, x > 0.0);
}

fn qk_at(b: u32, h: u32, t: u32, i: u32) -> u32 {
    return b * p.qb + h * p.qh + t * p.qt + i;
}

fn v_at(b: u32, h: u32, t: u32, e: u32) -> u32 {
    return b * p.vb + h * p.vh + t * p.vt + e;
}

// Widths rounded up to a multiple of 4, and in vec4s.
fn w4(n: u32) -> u32 {
    return (n + 3u) / 4u;
}

fn a4(j: u32, i4: u32) -> vec4<f32> {
    let o = j * MAX_D + 4u * i4;
    return vec4<f32>(sh_a[o], sh_a[o + 1u], sh_a[o + 2u], sh_a[o + 3u]);
}

fn b4(j: u32, i4: u32) -> vec4<f32> {
    let o = j * MAX_D + 4u * i4;
    return vec4<f32>(sh_b[o], sh_b[o + 1u], sh_b[o + 2u], sh_b[o + 3u]);
}

fn fq4(j: u32, i4: u32) -> vec4<f32> {
    let o = j * MAX_D + 4u * i4;
    return vec4<f32>(sh_fq[o], sh_fq[o + 1u], sh_fq[o + 2u], sh_fq[o + 3u]);
}

fn fk4(j: u32, i4: u32) -> vec4<f32> {
    let o = j * MAX_D + 4u * i4;
    return vec4<f32>(sh_fk[o], sh_fk[o + 1u], sh_fk[o + 2u], sh_fk[o + 3u]);
}

fn v4(j: u32, c4: u32) -> vec4<f32> {
    let o = j * MAX_D + 4u * c4;
    return vec4<f32>(sh_v[o], sh_v[o + 1u], sh_v[o + 2u], sh_v[o + 3u]);
}

fn dnum4(j: u32, c4: u32) -> vec4<f32> {
    let o = j * MAX_D + 4u * c4;
    return vec4<f32>(sh_dnum[o], sh_dnum[o + 1u], sh_dnum[o + 2u], sh_dnum[o + 3u]);
}

fn tok_at(b: u32, h: u32, t: u32) -> u32 {
    return ((b * p.heads + h) * p.seq + t) * 2u;
}

fn key_weight(b: u32, t: u32) -> f32 {
    if (p.has_mask != 0u) {
        return mask[b * p.seq + t];
    }
    return 1.0;
}

fn sin_cos(t: u32, i: u32) -> vec2<f32> {
    let pair = i / 2u;
    return vec2<f32>(table[t * p.dim + pair], table[t * p.dim + p.dim / 2u + pair]);
}

// Rotation R_t of feature i, given the feature and its pair partner (i ^ 1).
fn rotate(t: u32, i: u32, f: f32, partner: f32) -> f32 {
    if (p.has_rope == 0u) {
        return f;
    }
    let sc = sin_cos(t, i);
    if ((i & 1u) == 0u) {
        return f * sc.y - partner * sc.x;
    }
    return f * sc.y + partner * sc.x;
}

// Transposed rotation R_t^T (rotation by -theta).
fn rotate_back(t: u32, i: u32, f: f32, partner: f32) -> f32 {
    if (p.has_rope == 0u) {
        return f;
    }
    let sc = sin_cos(t, i);
    if ((i & 1u) == 0u) {
        return f * sc.y + partner * sc.x;
    }
    return f * sc.y - partner * sc.x;
}

// Staging: tokens t0 .. t0 + cnt of head (b, h) into workgroup memory, row j = t - t0,
// columns past the width up to the next multiple of 4 set to 0.

fn stage_q(b: u32, h: u32, t0: u32, cnt: u32, li: u32) {
    let w = 4u * w4(p.dim);
    for (var e = li; e < cnt * w; e += MAX_D) {
        let j = e / w;
        let i = e % w;
        if (i >= p.dim) {
            sh_fq[j * MAX_D + i] = 0.0;
            sh_a[j * MAX_D + i] = 0.0;
            continue;
        }
        let f = phi(f32(q[qk_at(b, h, t0 + j, i)]));
        var partner = 0.0;
        if (p.has_rope != 0u) {
            partner = phi(f32(q[qk_at(b, h, t0 + j, i ^ 1u)]));
        }
        sh_fq[j * MAX_D + i] = f;
        sh_a[j * MAX_D + i] = rotate(t0 + j, i, f, partner);
    }
}

fn stage_k(b: u32, h: u32, t0: u32, cnt: u32, li: u32) {
    let width = 4u * w4(p.dim);
    for (var e = li; e < cnt * width; e += MAX_D) {
        let j = e / width;
        let i = e % width;
        if (i >= p.dim) {
            sh_fk[j * MAX_D + i] = 0.0;
            sh_b[j * MAX_D + i] = 0.0;
            continue;
        }
        let w = key_weight(b, t0 + j);
        let f = w * phi(f32(k[qk_at(b, h, t0 + j, i)]));
        var partner = 0.0;
        if (p.has_rope != 0u) {
            partner = w * phi(f32(k[qk_at(b, h, t0 + j, i ^ 1u)]));
        }
        sh_fk[j * MAX_D + i] = f;
        sh_b[j * MAX_D + i] = rotate(t0 + j, i, f, partner);
    }
}

fn stage_v(b: u32, h: u32, t0: u32, cnt: u32, li: u32) {
    let w = 4u * w4(p.dim_v);
    for (var e = li; e < cnt * w; e += MAX_D) {
        let j = e / w;
        let c = e % w;
        var x = 0.0;
        if (c < p.dim_v) {
            x = f32(v[v_at(b, h, t0 + j, c)]);
        }
        sh_v[j * MAX_D + c] = x;
    }
}

// dnum = g / den, and (with `dden`) the per-token dden into sh_tok.
fn stage_grad(b: u32, h: u32, t0: u32, cnt: u32, li: u32, dden: bool) {
    let w = 4u * w4(p.dim_v);
    for (var e = li; e < cnt * w; e += MAX_D) {
        let j = e / w;
        let c = e % w;
        var x = 0.0;
        if (c < p.dim_v) {
            x = f32(grad_out[v_at(b, h, t0 + j, c)]) / tok[tok_at(b, h, t0 + j)];
        }
        sh_dnum[j * MAX_D + c] = x;
    }
    if (dden && li < cnt) {
        sh_tok[li] = tok[tok_at(b, h, t0 + li) + 1u];
    }
}

fn head_of(wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    let bh = wid.x + wid.y * nwg.x;
    return vec2<u32>(bh / p.heads, bh % p.heads);
}

// The tokens of this workgroup's chunk (workgroup z): [x, y).
fn chunk_of(wid: vec3<u32>) -> vec2<u32> {
    let start = wid.z * p.chunk_len;
    return vec2<u32>(start, min(p.seq, start + p.chunk_len));
}

// Where (b, h)'s state starts, in `state`, or in `state_out` for chunk c.
fn state_at(b: u32, h: u32) -> u32 {
    return (b * p.heads + h) * (p.dim * p.dim_v + p.dim);
}

fn state_out_at(c: u32, b: u32, h: u32) -> u32 {
    return (c * p.batch * p.heads) * (p.dim * p.dim_v + p.dim) + state_at(b, h);
}

// Staged token j's part of S's row li (b_j[li] v_j, into st); returns its part of z_li.
fn add_s_row(li: u32, j: u32) -> f32 {
    let bi = sh_b[j * MAX_D + li];
    for (var c4 = 0u; c4 < w4(p.dim_v); c4++) {
        st[c4] += bi * v4(j, c4);
    }
    return sh_fk[j * MAX_D + li];
}

// Staged token j's part of U's row li (a_j[li] dnum_j, into st); returns its part of y_li.
fn add_u_row(li: u32, j: u32) -> f32 {
    let ai = sh_a[j * MAX_D + li];
    for (var c4 = 0u; c4 < w4(p.dim_v); c4++) {
        st[c4] += ai * dnum4(j, c4);
    }
    return sh_tok[j] * sh_fq[j * MAX_D + li];
}

// Non-causal: S (= sum_n b_n v_n^T) and z (= sum_n fk_n) over the chunk's tokens.
// Thread i < dim owns row i of S and z_i.
@compute @workgroup_size(MAX_D)
fn sum_s(@builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    let span = chunk_of(wid);
    var zi = 0.0;
    for (var t0 = span.x; t0 < span.y; t0 += BT) {
        let cnt = min(BT, span.y - t0);
        stage_k(b, h, t0, cnt, li);
        stage_v(b, h, t0, cnt, li);
        workgroupBarrier();
        if (li < p.dim) {
            for (var j = 0u; j < cnt; j++) {
                zi += add_s_row(li, j);
            }
        }
        workgroupBarrier();
    }
    write_state_row(state_out_at(wid.z, b, h), li, zi);
}

// Non-causal: U (= sum_m a_m dnum_m^T) and y (= sum_m dden_m fq_m) over the chunk's tokens.
// Thread i < dim owns row i of U and y_i.
@compute @workgroup_size(MAX_D)
fn sum_u(@builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    let span = chunk_of(wid);
    var yi = 0.0;
    for (var t0 = span.x; t0 < span.y; t0 += BT) {
        let cnt = min(BT, span.y - t0);
        stage_q(b, h, t0, cnt, li);
        stage_grad(b, h, t0, cnt, li, true);
        workgroupBarrier();
        if (li < p.dim) {
            for (var j = 0u; j < cnt; j++) {
                yi += add_u_row(li, j);
            }
        }
        workgroupBarrier();
    }
    write_state_row(state_out_at(wid.z, b, h), li, yi);
}

// Row li of the d x dv state (st) and its vector's element li, into state_out.
fn write_state_row(base: u32, li: u32, x: f32) {
    if (li < p.dim) {
        for (var c = 0u; c < p.dim_v; c++) {
            state_out[base + li * p.dim_v + c] = st[c / 4u][c % 4u];
        }
        state_out[base + p.dim * p.dim_v + li] = x;
    }
}

// Row i of the summed state into st.
fn load_state_row(b: u32, h: u32, i: u32) {
    let base = state_at(b, h) + i * p.dim_v;
    for (var c = 0u; c < p.dim_v; c++) {
        st[c / 4u][c % 4u] = state[base + c];
    }
}

// Column e of the summed state into st.
fn load_state_col(b: u32, h: u32, e: u32) {
    let base = state_at(b, h) + e;
    for (var i = 0u; i < p.dim; i++) {
        st[i / 4u][i % 4u] = state[base + i * p.dim_v];
    }
}

// Element i of the summed state's vector (z or y).
fn state_vec_at(b: u32, h: u32, i: u32) -> f32 {
    return state[state_at(b, h) + p.dim * p.dim_v + i];
}

// The output of staged token j (a, fq) from S's column li (st) and z (st_z).
fn emit_out(b: u32, h: u32, t0: u32, li: u32, j: u32) {
    var num = 0.0;
    var den = p.eps;
    for (var i4 = 0u; i4 < w4(p.dim); i4++) {
        num += dot(a4(j, i4), st[i4]);
        den += dot(fq4(j, i4), st_z[i4]);
    }
    out[v_at(b, h, t0 + j, li)] = T(num / den);
    if (li == 0u) {
        tok[tok_at(b, h, t0 + j)] = den;
    }
}

// Causal forward, a scan over the sequence. Thread e < dim_v owns column e of S; every
// thread keeps its own copy of z.
@compute @workgroup_size(MAX_D)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    let d4 = w4(p.dim);
    for (var t0 = 0u; t0 < p.seq; t0 += BT) {
        let cnt = min(BT, p.seq - t0);
        stage_q(b, h, t0, cnt, li);
        stage_k(b, h, t0, cnt, li);
        stage_v(b, h, t0, cnt, li);
        workgroupBarrier();
        if (li < p.dim_v) {
            for (var j = 0u; j < cnt; j++) {
                let ve = sh_v[j * MAX_D + li];
                for (var i4 = 0u; i4 < d4; i4++) {
                    st[i4] += b4(j, i4) * ve;
                    st_z[i4] += fk4(j, i4);
                }
                emit_out(b, h, t0, li, j);
            }
        }
        workgroupBarrier();
    }
}

// Non-causal forward: the chunk's tokens from the summed S and z (sum_s).
@compute @workgroup_size(MAX_D)
fn forward_chunk(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    for (var i = 0u; i < p.dim; i++) {
        st_z[i / 4u][i % 4u] = state_vec_at(b, h, i);
    }
    if (li < p.dim_v) {
        load_state_col(b, h, li);
    }
    let span = chunk_of(wid);
    for (var t0 = span.x; t0 < span.y; t0 += BT) {
        let cnt = min(BT, span.y - t0);
        stage_q(b, h, t0, cnt, li);
        workgroupBarrier();
        if (li < p.dim_v) {
            for (var j = 0u; j < cnt; j++) {
                emit_out(b, h, t0, li, j);
            }
        }
        workgroupBarrier();
    }
}

// dden_m = -(g_m . out_m) / den_m, one thread per token.
@compute @workgroup_size(256)
fn backward_prep(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (idx >= p.batch * p.heads * p.seq) {
        return;
    }
    let t = idx % p.seq;
    let h = (idx / p.seq) % p.heads;
    let b = idx / (p.seq * p.heads);
    var s = 0.0;
    for (var c = 0u; c < p.dim_v; c++) {
        s += f32(grad_out[v_at(b, h, t, c)]) * f32(out_saved[v_at(b, h, t, c)]);
    }
    let at = tok_at(b, h, t);
    tok[at + 1u] = -s / tok[at];
}

// dq_m = phi'(q_m) (R_m^T da_m + dfq_m) for staged tokens t0 .. t0 + cnt, da_m in sh_a.
fn emit_dq(b: u32, h: u32, t0: u32, cnt: u32, li: u32, dfq: array<f32, BT>) {
    if (li < p.dim) {
        for (var j = 0u; j < cnt; j++) {
            let t = t0 + j;
            var partner = 0.0;
            if (p.has_rope != 0u) {
                partner = sh_a[j * MAX_D + (li ^ 1u)];
            }
            let back = rotate_back(t, li, sh_a[j * MAX_D + li], partner);
            let at = qk_at(b, h, t, li);
            grad_q[at] = T(dphi(f32(q[at])) * (back + dfq[j]));
        }
    }
}

// Thread li's da (S's row li, st, against dnum) of staged token j into sh_a, and its dfq
// (dden z_li) as the result.
fn dq_parts(li: u32, j: u32, zi: f32) -> f32 {
    var da = 0.0;
    for (var c4 = 0u; c4 < w4(p.dim_v); c4++) {
        da += dot(st[c4], dnum4(j, c4));
    }
    sh_a[j * MAX_D + li] = da;
    return sh_tok[j] * zi;
}

// Causal dq, a scan. Thread i < dim owns row i of S and z_i.
@compute @workgroup_size(MAX_D)
fn backward_q(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    var zi = 0.0;
    for (var t0 = 0u; t0 < p.seq; t0 += BT) {
        let cnt = min(BT, p.seq - t0);
        stage_grad(b, h, t0, cnt, li, true);
        stage_k(b, h, t0, cnt, li);
        stage_v(b, h, t0, cnt, li);
        workgroupBarrier();
        var dfq: array<f32, BT>;
        if (li < p.dim) {
            for (var j = 0u; j < cnt; j++) {
                zi += add_s_row(li, j);
                dfq[j] = dq_parts(li, j, zi);
            }
        }
        workgroupBarrier();
        emit_dq(b, h, t0, cnt, li, dfq);
        workgroupBarrier();
    }
}

// Non-causal dq: the chunk's tokens from the summed S and z.
@compute @workgroup_size(MAX_D)
fn backward_q_chunk(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    var zi = 0.0;
    if (li < p.dim) {
        load_state_row(b, h, li);
        zi = state_vec_at(b, h, li);
    }
    let span = chunk_of(wid);
    for (var t0 = span.x; t0 < span.y; t0 += BT) {
        let cnt = min(BT, span.y - t0);
        stage_grad(b, h, t0, cnt, li, true);
        workgroupBarrier();
        var dfq: array<f32, BT>;
        if (li < p.dim) {
            for (var j = 0u; j < cnt; j++) {
                dfq[j] = dq_parts(li, j, zi);
            }
        }
        workgroupBarrier();
        emit_dq(b, h, t0, cnt, li, dfq);
        workgroupBarrier();
    }
}

// dk_n = w_n phi'(k_n) (R_n^T db_n + y_n) for staged tokens, db_n in sh_b.
fn emit_dk(b: u32, h: u32, t0: u32, cnt: u32, li: u32, dfk: array<f32, BT>) {
    if (li < p.dim) {
        for (var j = 0u; j < cnt; j++) {
            let t = t0 + j;
            var partner = 0.0;
            if (p.has_rope != 0u) {
                partner = sh_b[j * MAX_D + (li ^ 1u)];
            }
            let back = rotate_back(t, li, sh_b[j * MAX_D + li], partner);
            let at = qk_at(b, h, t, li);
            grad_k[at] = T(key_weight(b, t) * dphi(f32(k[at])) * (back + dfk[j]));
        }
    }
}

// Thread li's db (U's row li, st, against v) of staged token j into sh_b.
fn dk_part(li: u32, j: u32) {
    var db = 0.0;
    for (var c4 = 0u; c4 < w4(p.dim_v); c4++) {
        db += dot(st[c4], v4(j, c4));
    }
    sh_b[j * MAX_D + li] = db;
}

// Causal dk, a reverse scan. Thread i < dim owns row i of U and y_i; tokens run from the
// last to the first.
@compute @workgroup_size(MAX_D)
fn backward_k(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    var yi = 0.0;
    let blocks = (p.seq + BT - 1u) / BT;
    for (var blk = blocks; blk > 0u; blk--) {
        let t0 = (blk - 1u) * BT;
        let cnt = min(BT, p.seq - t0);
        stage_v(b, h, t0, cnt, li);
        stage_q(b, h, t0, cnt, li);
        stage_grad(b, h, t0, cnt, li, true);
        workgroupBarrier();
        var dfk: array<f32, BT>;
        if (li < p.dim) {
            for (var jj = 0u; jj < cnt; jj++) {
                let j = cnt - 1u - jj;
                yi += add_u_row(li, j);
                dk_part(li, j);
                dfk[j] = yi;
            }
        }
        workgroupBarrier();
        emit_dk(b, h, t0, cnt, li, dfk);
        workgroupBarrier();
    }
}

// Non-causal dk: the chunk's tokens from the summed U and y (sum_u).
@compute @workgroup_size(MAX_D)
fn backward_k_chunk(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    var yi = 0.0;
    if (li < p.dim) {
        load_state_row(b, h, li);
        yi = state_vec_at(b, h, li);
    }
    let span = chunk_of(wid);
    for (var t0 = span.x; t0 < span.y; t0 += BT) {
        let cnt = min(BT, span.y - t0);
        stage_v(b, h, t0, cnt, li);
        workgroupBarrier();
        var dfk: array<f32, BT>;
        if (li < p.dim) {
            for (var j = 0u; j < cnt; j++) {
                dk_part(li, j);
                dfk[j] = yi;
            }
        }
        workgroupBarrier();
        emit_dk(b, h, t0, cnt, li, dfk);
        workgroupBarrier();
    }
}

// dv_n = U^T b_n for staged token j, from U's column li (st).
fn dv_of(j: u32) -> f32 {
    var dv = 0.0;
    for (var i4 = 0u; i4 < w4(p.dim); i4++) {
        dv += dot(st[i4], b4(j, i4));
    }
    return dv;
}

// Causal dv, a reverse scan. Thread e < dim_v owns column e of U; tokens run from the last
// to the first.
@compute @workgroup_size(MAX_D)
fn backward_v(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    let d4 = w4(p.dim);
    let blocks = (p.seq + BT - 1u) / BT;
    for (var blk = blocks; blk > 0u; blk--) {
        let t0 = (blk - 1u) * BT;
        let cnt = min(BT, p.seq - t0);
        stage_k(b, h, t0, cnt, li);
        stage_q(b, h, t0, cnt, li);
        stage_grad(b, h, t0, cnt, li, false);
        workgroupBarrier();
        if (li < p.dim_v) {
            for (var jj = 0u; jj < cnt; jj++) {
                let j = cnt - 1u - jj;
                let dn = sh_dnum[j * MAX_D + li];
                for (var i4 = 0u; i4 < d4; i4++) {
                    st[i4] += a4(j, i4) * dn;
                }
                grad_v[v_at(b, h, t0 + j, li)] = T(dv_of(j));
            }
        }
        workgroupBarrier();
    }
}

// Non-causal dv: the chunk's tokens from the summed U.
@compute @workgroup_size(MAX_D)
fn backward_v_chunk(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    if (li < p.dim_v) {
        load_state_col(b, h, li);
    }
    let span = chunk_of(wid);
    for (var t0 = span.x; t0 < span.y; t0 += BT) {
        let cnt = min(BT, span.y - t0);
        stage_k(b, h, t0, cnt, li);
        workgroupBarrier();
        if (li < p.dim_v) {
            for (var j = 0u; j < cnt; j++) {
                grad_v[v_at(b, h, t0 + j, li)] = T(dv_of(j));
            }
        }
        workgroupBarrier();
    }
}
