// Causal linear attention in chunked form (flash-linear-attention's chunk algorithm), with
// the elu+1 feature map and RoFormer eq. (19) RoPE, forward and backward. The same function
// as linear_attention.wgsl's causal scan, which the tests hold it to.
//
// Tokens are cut into chunks of C. Per batch b and head h, with a = R fq, b = R fk (or
// fq, fk without RoPE), fk already weighted by the key mask:
//     S_c = sum_{n before chunk c} b_n v_n^T,   z_c = sum_{n before chunk c} fk_n
//     out_m = (a_m^T S_c + sum_{n in c, n <= m} (a_m . b_n) v_n)
//           / (fq_m . z_c + sum_{n in c, n <= m} fq_m . fk_n + eps)
// Backward, with dnum = g / den, dden = -(g . out) / den (the `prep` pass):
//     U_c = sum_{m after chunk c} a_m dnum_m^T,  y_c = sum_{m after chunk c} dden_m fq_m
//     dq_m = dphi(q_m) (R^T (S_c dnum_m + sum_{n in c, n <= m} b_n (v_n . dnum_m))
//                       + dden_m (z_c + sum_{n in c, n <= m} fk_n))
//     dk_n = w dphi(k_n) (R^T (U_c v_n + sum_{m in c, m >= n} a_m (dnum_m . v_n))
//                         + y_c + sum_{m in c, m >= n} dden_m fq_m)
//     dv_n = U_c^T b_n + sum_{m in c, m >= n} dnum_m (a_m . b_n)
//
// Passes: `features` (per token: fq, fk, a, b, dphi(q), w dphi(k)); `states` and
// `reverse_states` (sequential over chunks, one workgroup per head: the only sequential
// work); `output`, `backward_q`, `backward_k`, `backward_v` (one workgroup per chunk, all in
// parallel).
// Memory per head: the features (6 T d), one state per chunk (T/C (d dv + d)), no T x T.
//
// With `mapped` set, q and k are already features (Performer's random features, say): phi
// is the identity and there is no RoPE (the host checks).
//
// q, k, v, out and their gradients are T (f32, or f16 in the f16 variant); the RoPE table,
// mask, features, states and all arithmetic are f32.

alias T = f32;

struct Params {
    batch: u32, heads: u32, seq: u32, dim: u32,
    dim_v: u32, qb: u32, qh: u32, qt: u32,
    vb: u32, vh: u32, vt: u32, chunks: u32,
    has_mask: u32, has_rope: u32, eps: f32, mapped: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
@group(0) @binding(4) var<storage, read> table: array<f32>;
@group(0) @binding(5) var<storage, read> mask: array<f32>;
// [batch, heads, seq, 6, dim]: fq, fk, a, b, dphi(q), w dphi(k).
@group(0) @binding(6) var<storage, read_write> feat: array<f32>;
// [batch, heads, chunks, dim * dim_v + dim]: S_c (row-major) then z_c; or U_c then y_c.
@group(0) @binding(7) var<storage, read_write> state: array<f32>;
// [batch, heads, seq, 2]: den (output), dden (prep).
@group(0) @binding(8) var<storage, read_write> tok: array<f32>;
// output's result; prep reads it back.
@group(0) @binding(9) var<storage, read_write> out: array<T>;
@group(0) @binding(10) var<storage, read> out_saved: array<T>;
// The loss's gradient with respect to out, and the gradients the backward passes write.
@group(0) @binding(11) var<storage, read> grad_out: array<T>;
@group(0) @binding(12) var<storage, read_write> grad_q: array<T>;
@group(0) @binding(13) var<storage, read_write> grad_k: array<T>;
@group(0) @binding(14) var<storage, read_write> grad_v: array<T>;

// Variant constants: largest head dimension (also the workgroup size) and chunk length.
const MAX_D: u32 = 64u; // variant
const C: u32 = 16u; // variant
const F_Q: u32 = 0u;
const F_K: u32 = 1u;
const F_A: u32 = 2u;
const F_B: u32 = 3u;
const F_DQ: u32 = 4u;
const F_DK: u32 = 5u;

var<workgroup> sh_0: array<f32, C * MAX_D>;
var<workgroup> sh_1: array<f32, C * MAX_D>;
var<workgroup> sh_2: array<f32, C * MAX_D>;
var<workgroup> sh_3: array<f32, C * MAX_D>;
var<workgroup> sh_4: array<f32, C * MAX_D>;
var<workgroup> sh_p: array<f32, C * C>;
var<workgroup> sh_r: array<f32, C * C>;
var<workgroup> sh_t: array<f32, 2u * C>;

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

fn feat_at(b: u32, h: u32, t: u32, which: u32, i: u32) -> u32 {
    return (((b * p.heads + h) * p.seq + t) * 6u + which) * p.dim + i;
}

fn state_at(b: u32, h: u32, c: u32) -> u32 {
    return ((b * p.heads + h) * p.chunks + c) * (p.dim * p.dim_v + p.dim);
}

fn tok_at(b: u32, h: u32, t: u32) -> u32 {
    return ((b * p.heads + h) * p.seq + t) * 2u;
}

fn sin_cos(t: u32, i: u32) -> vec2<f32> {
    let pair = i / 2u;
    return vec2<f32>(table[t * p.dim + pair], table[t * p.dim + p.dim / 2u + pair]);
}

// R_t^T applied to feature i, given it and its pair partner (identity without RoPE).
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

// Per token and feature: fq, fk = w phi(k), their rotations a, b, dphi(q), w dphi(k).
@compute @workgroup_size(256)
fn features(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (idx >= p.batch * p.heads * p.seq * p.dim) {
        return;
    }
    let i = idx % p.dim;
    let t = (idx / p.dim) % p.seq;
    let h = (idx / (p.dim * p.seq)) % p.heads;
    let b = idx / (p.dim * p.seq * p.heads);
    var w = 1.0;
    if (p.has_mask != 0u) {
        w = mask[b * p.seq + t];
    }
    let xq = f32(q[qk_at(b, h, t, i)]);
    let xk = f32(k[qk_at(b, h, t, i)]);
    let fq = phi(xq);
    let fk = w * phi(xk);
    var a = fq;
    var bb = fk;
    if (p.has_rope != 0u) {
        let sc = sin_cos(t, i);
        let pq = phi(f32(q[qk_at(b, h, t, i ^ 1u)]));
        let pk = w * phi(f32(k[qk_at(b, h, t, i ^ 1u)]));
        if ((i & 1u) == 0u) {
            a = fq * sc.y - pq * sc.x;
            bb = fk * sc.y - pk * sc.x;
        } else {
            a = fq * sc.y + pq * sc.x;
            bb = fk * sc.y + pk * sc.x;
        }
    }
    feat[feat_at(b, h, t, F_Q, i)] = fq;
    feat[feat_at(b, h, t, F_K, i)] = fk;
    feat[feat_at(b, h, t, F_A, i)] = a;
    feat[feat_at(b, h, t, F_B, i)] = bb;
    feat[feat_at(b, h, t, F_DQ, i)] = dphi(xq);
    feat[feat_at(b, h, t, F_DK, i)] = w * dphi(xk);
}

// Staging helpers: chunk rows t0 .. t0 + C of one feature (or of v, dnum) into an array,
// zero past the end.
fn stage_feat(dst: u32, which: u32, b: u32, h: u32, t0: u32, li: u32) {
    for (var e = li; e < C * MAX_D; e += MAX_D) {
        let r = e / MAX_D;
        let i = e % MAX_D;
        var x = 0.0;
        if (t0 + r < p.seq && i < p.dim) {
            x = feat[feat_at(b, h, t0 + r, which, i)];
        }
        switch dst {
            case 0u: { sh_0[e] = x; }
            case 1u: { sh_1[e] = x; }
            case 2u: { sh_2[e] = x; }
            default: { sh_3[e] = x; }
        }
    }
}

fn stage_v(b: u32, h: u32, t0: u32, li: u32) {
    for (var e = li; e < C * MAX_D; e += MAX_D) {
        let r = e / MAX_D;
        let c = e % MAX_D;
        var x = 0.0;
        if (t0 + r < p.seq && c < p.dim_v) {
            x = f32(v[v_at(b, h, t0 + r, c)]);
        }
        sh_4[e] = x;
    }
}

// dnum = g / den into sh_3, dden into sh_t[C + r].
fn stage_grad(b: u32, h: u32, t0: u32, li: u32) {
    for (var e = li; e < C * MAX_D; e += MAX_D) {
        let r = e / MAX_D;
        let c = e % MAX_D;
        var x = 0.0;
        if (t0 + r < p.seq && c < p.dim_v) {
            x = f32(grad_out[v_at(b, h, t0 + r, c)]) / tok[tok_at(b, h, t0 + r)];
        }
        sh_3[e] = x;
    }
    if (li < C) {
        var dd = 0.0;
        if (t0 + li < p.seq) {
            dd = tok[tok_at(b, h, t0 + li) + 1u];
        }
        sh_t[C + li] = dd;
    }
}

fn dot_rows(x: u32, m: u32, y: u32, n: u32) -> f32 {
    // Row m of array x dotted with row n of array y, over the head dimension.
    var s = 0.0;
    for (var i = 0u; i < p.dim; i++) {
        var a = 0.0;
        var bb = 0.0;
        switch x {
            case 0u: { a = sh_0[m * MAX_D + i]; }
            case 1u: { a = sh_1[m * MAX_D + i]; }
            case 2u: { a = sh_2[m * MAX_D + i]; }
            default: { a = sh_3[m * MAX_D + i]; }
        }
        switch y {
            case 0u: { bb = sh_0[n * MAX_D + i]; }
            case 1u: { bb = sh_1[n * MAX_D + i]; }
            case 2u: { bb = sh_2[n * MAX_D + i]; }
            default: { bb = sh_3[n * MAX_D + i]; }
        }
        s += a * bb;
    }
    return s;
}

fn dot_v(x: u32, m: u32, n: u32) -> f32 {
    // Row m of sh_3 (dnum) dotted with row n of sh_4 (v), over dim_v.
    var s = 0.0;
    for (var c = 0u; c < p.dim_v; c++) {
        s += sh_3[m * MAX_D + c] * sh_4[n * MAX_D + c];
    }
    return s;
}

fn head_of(wid: vec3<u32>, nwg: vec3<u32>) -> vec2<u32> {
    let bh = wid.x + wid.y * nwg.x;
    return vec2<u32>(bh / p.heads, bh % p.heads);
}

fn chunk_of(wid: vec3<u32>, nwg: vec3<u32>) -> vec3<u32> {
    let id = wid.x + wid.y * nwg.x;
    return vec3<u32>(id / (p.heads * p.chunks), (id / p.chunks) % p.heads, id % p.chunks);
}

// S_c and z_c before each chunk. Thread e < dim_v owns column e of S; thread i < dim owns z_i.
@compute @workgroup_size(MAX_D)
fn states(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    var s_col: array<f32, MAX_D>;
    var zi = 0.0;
    for (var c = 0u; c < p.chunks; c++) {
        let base = state_at(b, h, c);
        if (li < p.dim_v) {
            for (var i = 0u; i < p.dim; i++) {
                state[base + i * p.dim_v + li] = s_col[i];
            }
        }
        if (li < p.dim) {
            state[base + p.dim * p.dim_v + li] = zi;
        }
        workgroupBarrier();
        stage_feat(3u, F_B, b, h, c * C, li);
        stage_feat(1u, F_K, b, h, c * C, li);
        stage_v(b, h, c * C, li);
        workgroupBarrier();
        for (var n = 0u; n < C; n++) {
            if (li < p.dim_v) {
                let ve = sh_4[n * MAX_D + li];
                for (var i = 0u; i < p.dim; i++) {
                    s_col[i] += sh_3[n * MAX_D + i] * ve;
                }
            }
            if (li < p.dim) {
                zi += sh_1[n * MAX_D + li];
            }
        }
    }
}

// Outputs of one chunk, and its denominators.
@compute @workgroup_size(MAX_D)
fn output(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let bhc = chunk_of(wid, nwg);
    let b = bhc.x;
    let h = bhc.y;
    if (b >= p.batch) {
        return;
    }
    let t0 = bhc.z * C;
    stage_feat(0u, F_Q, b, h, t0, li);
    stage_feat(1u, F_K, b, h, t0, li);
    stage_feat(2u, F_A, b, h, t0, li);
    stage_feat(3u, F_B, b, h, t0, li);
    stage_v(b, h, t0, li);
    workgroupBarrier();
    let base = state_at(b, h, bhc.z);
    // P = (A B^T) and R = (F G^T), causally masked, C x C.
    for (var e = li; e < C * C; e += MAX_D) {
        let m = e / C;
        let n = e % C;
        var pa = 0.0;
        var pz = 0.0;
        if (n <= m) {
            pa = dot_rows(2u, m, 3u, n);
            pz = dot_rows(0u, m, 1u, n);
        }
        sh_p[e] = pa;
        sh_r[e] = pz;
    }
    workgroupBarrier();
    if (li < C) {
        var den = p.eps;
        for (var i = 0u; i < p.dim; i++) {
            den += sh_0[li * MAX_D + i] * state[base + p.dim * p.dim_v + i];
        }
        for (var n = 0u; n <= li; n++) {
            den += sh_r[li * C + n];
        }
        sh_t[li] = den;
        if (t0 + li < p.seq) {
            tok[tok_at(b, h, t0 + li)] = den;
        }
    }
    workgroupBarrier();
    if (li < p.dim_v) {
        var s_col: array<f32, MAX_D>;
        for (var i = 0u; i < p.dim; i++) {
            s_col[i] = state[base + i * p.dim_v + li];
        }
        for (var m = 0u; m < C; m++) {
            if (t0 + m >= p.seq) {
                break;
            }
            var num = 0.0;
            for (var i = 0u; i < p.dim; i++) {
                num += sh_2[m * MAX_D + i] * s_col[i];
            }
            for (var n = 0u; n <= m; n++) {
                num += sh_p[m * C + n] * sh_4[n * MAX_D + li];
            }
            out[v_at(b, h, t0 + m, li)] = T(num / sh_t[m]);
        }
    }
}

// dden = -(g . out) / den per token; the forward output is bound at `res`.
@compute @workgroup_size(256)
fn prep(@builtin(workgroup_id) wid: vec3<u32>,
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

// U_c and y_c after each chunk, from the last chunk back. Thread e < dim_v owns column e of
// U; thread i < dim owns y_i.
@compute @workgroup_size(MAX_D)
fn reverse_states(@builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let bh = head_of(wid, nwg);
    let b = bh.x;
    let h = bh.y;
    if (b >= p.batch) {
        return;
    }
    var u_col: array<f32, MAX_D>;
    var yi = 0.0;
    for (var cc = p.chunks; cc > 0u; cc--) {
        let c = cc - 1u;
        let base = state_at(b, h, c);
        if (li < p.dim_v) {
            for (var i = 0u; i < p.dim; i++) {
                state[base + i * p.dim_v + li] = u_col[i];
            }
        }
        if (li < p.dim) {
            state[base + p.dim * p.dim_v + li] = yi;
        }
        workgroupBarrier();
        stage_feat(2u, F_A, b, h, c * C, li);
        stage_feat(0u, F_Q, b, h, c * C, li);
        stage_grad(b, h, c * C, li);
        workgroupBarrier();
        for (var m = 0u; m < C; m++) {
            if (li < p.dim_v) {
                let dn = sh_3[m * MAX_D + li];
                for (var i = 0u; i < p.dim; i++) {
                    u_col[i] += sh_2[m * MAX_D + i] * dn;
                }
            }
            if (li < p.dim) {
                yi += sh_t[C + m] * sh_0[m * MAX_D + li];
            }
        }
    }
}

// dq for one chunk. Thread i < dim owns feature i.
@compute @workgroup_size(MAX_D)
fn backward_q(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let bhc = chunk_of(wid, nwg);
    let b = bhc.x;
    let h = bhc.y;
    if (b >= p.batch) {
        return;
    }
    let t0 = bhc.z * C;
    stage_feat(0u, F_B, b, h, t0, li);
    stage_feat(1u, F_K, b, h, t0, li);
    stage_grad(b, h, t0, li);
    stage_v(b, h, t0, li);
    workgroupBarrier();
    // sh_p[m][n] = dnum_m . v_n for n <= m.
    for (var e = li; e < C * C; e += MAX_D) {
        let m = e / C;
        let n = e % C;
        sh_p[e] = select(0.0, dot_v(3u, m, n), n <= m);
    }
    workgroupBarrier();
    let base = state_at(b, h, bhc.z);
    // da goes to sh_2 (unused here) so each feature can see its RoPE partner's.
    var dfq: array<f32, C>;
    if (li < p.dim) {
        var s_row: array<f32, MAX_D>;
        for (var e = 0u; e < p.dim_v; e++) {
            s_row[e] = state[base + li * p.dim_v + e];
        }
        var z = state[base + p.dim * p.dim_v + li];
        for (var m = 0u; m < C; m++) {
            var da = 0.0;
            for (var e = 0u; e < p.dim_v; e++) {
                da += s_row[e] * sh_3[m * MAX_D + e];
            }
            for (var n = 0u; n <= m; n++) {
                da += sh_p[m * C + n] * sh_0[n * MAX_D + li];
            }
            z += sh_1[m * MAX_D + li];
            dfq[m] = sh_t[C + m] * z;
            sh_2[m * MAX_D + li] = da;
        }
    }
    workgroupBarrier();
    if (li < p.dim) {
        for (var m = 0u; m < C; m++) {
            let t = t0 + m;
            if (t >= p.seq) {
                break;
            }
            var partner = 0.0;
            if (p.has_rope != 0u) {
                partner = sh_2[m * MAX_D + (li ^ 1u)];
            }
            let back = rotate_back(t, li, sh_2[m * MAX_D + li], partner);
            grad_q[qk_at(b, h, t, li)] = T(feat[feat_at(b, h, t, F_DQ, li)] * (back + dfq[m]));
        }
    }
}

// dk for one chunk. Thread i < dim owns feature i.
@compute @workgroup_size(MAX_D)
fn backward_k(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let bhc = chunk_of(wid, nwg);
    let b = bhc.x;
    let h = bhc.y;
    if (b >= p.batch) {
        return;
    }
    let t0 = bhc.z * C;
    stage_feat(2u, F_A, b, h, t0, li);
    stage_feat(0u, F_Q, b, h, t0, li);
    stage_grad(b, h, t0, li);
    stage_v(b, h, t0, li);
    workgroupBarrier();
    // sh_p[m][n] = dnum_m . v_n for m >= n.
    for (var e = li; e < C * C; e += MAX_D) {
        let m = e / C;
        let n = e % C;
        sh_p[e] = select(0.0, dot_v(3u, m, n), m >= n);
    }
    workgroupBarrier();
    let base = state_at(b, h, bhc.z);
    // db goes to sh_1 (unused here) so each feature can see its RoPE partner's.
    var dfk: array<f32, C>;
    if (li < p.dim) {
        var u_row: array<f32, MAX_D>;
        for (var e = 0u; e < p.dim_v; e++) {
            u_row[e] = state[base + li * p.dim_v + e];
        }
        var y = state[base + p.dim * p.dim_v + li];
        for (var nn = 0u; nn < C; nn++) {
            let n = C - 1u - nn;
            var db = 0.0;
            for (var e = 0u; e < p.dim_v; e++) {
                db += u_row[e] * sh_4[n * MAX_D + e];
            }
            for (var m = n; m < C; m++) {
                db += sh_p[m * C + n] * sh_2[m * MAX_D + li];
            }
            y += sh_t[C + n] * sh_0[n * MAX_D + li];
            dfk[n] = y;
            sh_1[n * MAX_D + li] = db;
        }
    }
    workgroupBarrier();
    if (li < p.dim) {
        for (var n = 0u; n < C; n++) {
            let t = t0 + n;
            if (t >= p.seq) {
                break;
            }
            var partner = 0.0;
            if (p.has_rope != 0u) {
                partner = sh_1[n * MAX_D + (li ^ 1u)];
            }
            let back = rotate_back(t, li, sh_1[n * MAX_D + li], partner);
            grad_k[qk_at(b, h, t, li)] = T(feat[feat_at(b, h, t, F_DK, li)] * (back + dfk[n]));
        }
    }
}

// dv for one chunk. Thread e < dim_v owns column e.
@compute @workgroup_size(MAX_D)
fn backward_v(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let bhc = chunk_of(wid, nwg);
    let b = bhc.x;
    let h = bhc.y;
    if (b >= p.batch) {
        return;
    }
    let t0 = bhc.z * C;
    stage_feat(2u, F_A, b, h, t0, li);
    stage_feat(1u, F_B, b, h, t0, li);
    stage_grad(b, h, t0, li);
    workgroupBarrier();
    // sh_p[m][n] = a_m . b_n for m >= n.
    for (var e = li; e < C * C; e += MAX_D) {
        let m = e / C;
        let n = e % C;
        sh_p[e] = select(0.0, dot_rows(2u, m, 1u, n), m >= n);
    }
    workgroupBarrier();
    if (li < p.dim_v) {
        let base = state_at(b, h, bhc.z);
        var u_col: array<f32, MAX_D>;
        for (var i = 0u; i < p.dim; i++) {
            u_col[i] = state[base + i * p.dim_v + li];
        }
        for (var n = 0u; n < C; n++) {
            let t = t0 + n;
            if (t >= p.seq) {
                break;
            }
            var dv = 0.0;
            for (var i = 0u; i < p.dim; i++) {
                dv += u_col[i] * sh_1[n * MAX_D + i];
            }
            for (var m = n; m < C; m++) {
                dv += sh_p[m * C + n] * sh_3[m * MAX_D + li];
            }
            grad_v[v_at(b, h, t, li)] = T(dv);
        }
    }
}
