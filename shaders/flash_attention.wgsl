// Softmax attention without the T x T matrix (FlashAttention-2's scheme):
//     out = softmax(scale * q k^T + mask [causal]) v
// q, k, v, out and their gradients share one layout (strides sb, sh, st; features contiguous)
// and one head dimension. RoPE, when used, is applied to q and k beforehand.
//
// forward:   one workgroup per (batch, head, block of BLK queries); the key blocks stream
//            through workgroup memory with an online softmax (running max m, running sum l);
//            only m and l per query are saved (stats[.., 0..2]; not m + log(l), which
//            rounds to m when every key a row sees is padded, -3.4e38).
// bwd_prep:  D = sum_c dout * out per query (stats[.., 2]).
// bwd_dq:    per query block: recompute P = exp(S - m) / l, dP = dout v^T,
//            dS = P (dP - D), dq = scale dS k.
// bwd_dkdv:  per key block: the same P and dS, transposed: dv = P^T dout, dk = scale dS^T q.
// No float atomics: each gradient row is owned by one workgroup.
//
// Threads: BLK rows x 4; thread (r, p) owns output columns p, p + 4, ... of row r. Masked-out
// (causal or past the end) keys get probability exactly 0; a padding mask is additive, as in
// HuggingFace (-3.4e38 makes a row of only padded keys uniform, as there).
// q, k, v, out and the gradients are T (f32, or f16 in the f16 variant); the mask, stats,
// staged tiles and all arithmetic are f32.

alias T = f32;

struct Params {
    batch: u32, heads: u32, seq: u32, dim: u32,
    sb: u32, sh: u32, st: u32, causal: u32,
    has_mask: u32, scale: f32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
// [batch, seq] additive mask.
@group(0) @binding(4) var<storage, read> mask: array<f32>;
// [batch, heads, seq, 3]: m and l (written by forward), D (written by bwd_prep).
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
// forward's result; bwd_prep reads it back.
@group(0) @binding(6) var<storage, read_write> out: array<T>;
@group(0) @binding(7) var<storage, read> out_saved: array<T>;
// The loss's gradient with respect to out, and the gradients the backward passes write.
@group(0) @binding(8) var<storage, read> grad_out: array<T>;
@group(0) @binding(9) var<storage, read_write> grad_q: array<T>;
@group(0) @binding(10) var<storage, read_write> grad_k: array<T>;
@group(0) @binding(11) var<storage, read_write> grad_v: array<T>;

// Variant constants: the largest head dimension, and rows per block (so the staged blocks
// fit 32 KiB of workgroup memory).
const MAX_D: u32 = 64u; // variant
const BLK: u32 = 32u; // variant
const COLS: u32 = MAX_D / 4u;
// f32::MAX in hex: Tint (Chromium) rejects the decimal 3.40282347e38 as not representable.
const F32_MAX: f32 = 0x1.fffffep+127f;
// Row strides of the staged tiles, one longer than a row: the threads of a warp read the
// same column of different rows, which a stride of a multiple of 32 words puts in one
// memory bank (4-8-way conflicts); an odd stride spreads them over the banks.
const SD: u32 = MAX_D + 1u;
const SB: u32 = BLK + 1u;

var<workgroup> sh_a: array<f32, BLK * SD>;
var<workgroup> sh_b: array<f32, BLK * SD>;
var<workgroup> sh_c: array<f32, BLK * SD>;
var<workgroup> sh_d: array<f32, BLK * SD>;
var<workgroup> sh_p: array<f32, BLK * SB>;
var<workgroup> sh_s: array<f32, BLK * SB>;
var<workgroup> sh_red: array<f32, BLK * 4u>;
var<workgroup> sh_row: array<f32, BLK * 3u>;

fn at(b: u32, h: u32, t: u32, c: u32) -> u32 {
    return b * p.sb + h * p.sh + t * p.st + c;
}

fn stat_at(b: u32, h: u32, t: u32) -> u32 {
    return ((b * p.heads + h) * p.seq + t) * 3u;
}

// Whether query i may attend to key j.
fn allowed(i: u32, j: u32) -> bool {
    return i < p.seq && j < p.seq && (p.causal == 0u || j <= i);
}

fn mask_of(b: u32, j: u32) -> f32 {
    if (p.has_mask != 0u) {
        return mask[b * p.seq + j];
    }
    return 0.0;
}

// Staging: rows t0 .. t0 + BLK of q, k, v or dout into sh_a, sh_b, sh_c or sh_d, zero past
// the end and past the head dimension. One function per source: an entry point may only
// refer to the buffers its pipeline binds.

fn in_range(t: u32, c: u32) -> bool {
    return t < p.seq && c < p.dim;
}

fn stage_q(b: u32, h: u32, t0: u32, li: u32) {
    for (var e = li; e < BLK * MAX_D; e += BLK * 4u) {
        let r = e / MAX_D;
        let c = e % MAX_D;
        var x = 0.0;
        if (in_range(t0 + r, c)) {
            x = f32(q[at(b, h, t0 + r, c)]);
        }
        sh_a[r * SD + c] = x;
    }
}

fn stage_k(b: u32, h: u32, t0: u32, li: u32) {
    for (var e = li; e < BLK * MAX_D; e += BLK * 4u) {
        let r = e / MAX_D;
        let c = e % MAX_D;
        var x = 0.0;
        if (in_range(t0 + r, c)) {
            x = f32(k[at(b, h, t0 + r, c)]);
        }
        sh_b[r * SD + c] = x;
    }
}

fn stage_v(b: u32, h: u32, t0: u32, li: u32) {
    for (var e = li; e < BLK * MAX_D; e += BLK * 4u) {
        let r = e / MAX_D;
        let c = e % MAX_D;
        var x = 0.0;
        if (in_range(t0 + r, c)) {
            x = f32(v[at(b, h, t0 + r, c)]);
        }
        sh_c[r * SD + c] = x;
    }
}

fn stage_dout(b: u32, h: u32, t0: u32, li: u32) {
    for (var e = li; e < BLK * MAX_D; e += BLK * 4u) {
        let r = e / MAX_D;
        let c = e % MAX_D;
        var x = 0.0;
        if (in_range(t0 + r, c)) {
            x = f32(grad_out[at(b, h, t0 + r, c)]);
        }
        sh_d[r * SD + c] = x;
    }
}

// Sum of the 4 partials of each row: every thread of row r gets the row's total.
fn row_sum(r: u32, part: u32, x: f32) -> f32 {
    sh_red[r * 4u + part] = x;
    workgroupBarrier();
    let s = (sh_red[r * 4u] + sh_red[r * 4u + 1u]) + (sh_red[r * 4u + 2u] + sh_red[r * 4u + 3u]);
    workgroupBarrier();
    return s;
}

fn row_max(r: u32, part: u32, x: f32) -> f32 {
    sh_red[r * 4u + part] = x;
    workgroupBarrier();
    let m = max(max(sh_red[r * 4u], sh_red[r * 4u + 1u]), max(sh_red[r * 4u + 2u], sh_red[r * 4u + 3u]));
    workgroupBarrier();
    return m;
}

fn block_of(wid: vec3<u32>, nwg: vec3<u32>) -> vec3<u32> {
    // (batch, head, block)
    let blocks = (p.seq + BLK - 1u) / BLK;
    let id = wid.x + wid.y * nwg.x;
    return vec3<u32>(id / (p.heads * blocks), (id / blocks) % p.heads, id % blocks);
}

@compute @workgroup_size(BLK * 4u)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let bhq = block_of(wid, nwg);
    let b = bhq.x;
    let h = bhq.y;
    if (b >= p.batch) {
        return;
    }
    let q0 = bhq.z * BLK;
    let r = li / 4u;
    let part = li % 4u;
    let i = q0 + r;
    stage_q(b, h, q0, li);
    var m = -F32_MAX;
    var l = 0.0;
    var acc: array<f32, COLS>;
    var k_end = p.seq;
    if (p.causal != 0u) {
        k_end = min(p.seq, q0 + BLK);
    }
    for (var k0 = 0u; k0 < k_end; k0 += BLK) {
        workgroupBarrier();
        stage_k(b, h, k0, li);
        stage_v(b, h, k0, li);
        workgroupBarrier();
        var local_max = -F32_MAX;
        for (var j = part; j < BLK; j += 4u) {
            var s = 0.0;
            for (var c = 0u; c < p.dim; c++) {
                s += sh_a[r * SD + c] * sh_b[j * SD + c];
            }
            s = p.scale * s + mask_of(b, min(k0 + j, p.seq - 1u));
            sh_s[r * SB + j] = s;
            if (allowed(i, k0 + j)) {
                local_max = max(local_max, s);
            }
        }
        let m_new = max(m, row_max(r, part, local_max));
        // Probabilities replace the scores in place (each thread rewrites only its own).
        var local_sum = 0.0;
        for (var j = part; j < BLK; j += 4u) {
            var pj = 0.0;
            if (allowed(i, k0 + j)) {
                pj = exp(sh_s[r * SB + j] - m_new);
            }
            sh_s[r * SB + j] = pj;
            local_sum += pj;
        }
        let alpha = exp(m - m_new);
        l = alpha * l + row_sum(r, part, local_sum);
        m = m_new;
        // row_sum ended with a barrier: every probability of the block is in sh_s.
        for (var cc = 0u; cc < COLS; cc++) {
            let c = part + 4u * cc;
            var o = alpha * acc[cc];
            for (var j = 0u; j < BLK; j++) {
                o += sh_s[r * SB + j] * sh_c[j * SD + c];
            }
            acc[cc] = o;
        }
    }
    if (i < p.seq) {
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var cc = 0u; cc < COLS; cc++) {
            let c = part + 4u * cc;
            if (c < p.dim) {
                out[at(b, h, i, c)] = T(acc[cc] * inv);
            }
        }
        if (part == 0u) {
            stats[stat_at(b, h, i)] = m;
            stats[stat_at(b, h, i) + 1u] = l;
        }
    }
}

// D = sum_c dout * out, one thread per query.
@compute @workgroup_size(BLK * 4u)
fn bwd_prep(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let idx = (wid.x + wid.y * nwg.x) * BLK * 4u + li;
    if (idx >= p.batch * p.heads * p.seq) {
        return;
    }
    let t = idx % p.seq;
    let h = (idx / p.seq) % p.heads;
    let b = idx / (p.seq * p.heads);
    var s = 0.0;
    for (var c = 0u; c < p.dim; c++) {
        s += f32(grad_out[at(b, h, t, c)]) * f32(out_saved[at(b, h, t, c)]);
    }
    stats[stat_at(b, h, t) + 2u] = s;
}

@compute @workgroup_size(BLK * 4u)
fn bwd_dq(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let bhq = block_of(wid, nwg);
    let b = bhq.x;
    let h = bhq.y;
    if (b >= p.batch) {
        return;
    }
    let q0 = bhq.z * BLK;
    let r = li / 4u;
    let part = li % 4u;
    let i = q0 + r;
    stage_q(b, h, q0, li);
    stage_dout(b, h, q0, li);
    var m = 0.0;
    var inv_l = 0.0;
    var dd = 0.0;
    if (i < p.seq) {
        m = stats[stat_at(b, h, i)];
        inv_l = 1.0 / stats[stat_at(b, h, i) + 1u];
        dd = stats[stat_at(b, h, i) + 2u];
    }
    var acc: array<f32, COLS>;
    var k_end = p.seq;
    if (p.causal != 0u) {
        k_end = min(p.seq, q0 + BLK);
    }
    for (var k0 = 0u; k0 < k_end; k0 += BLK) {
        workgroupBarrier();
        stage_k(b, h, k0, li);
        stage_v(b, h, k0, li);
        workgroupBarrier();
        for (var j = part; j < BLK; j += 4u) {
            var ds = 0.0;
            if (allowed(i, k0 + j)) {
                var s = 0.0;
                var dp = 0.0;
                for (var c = 0u; c < p.dim; c++) {
                    s += sh_a[r * SD + c] * sh_b[j * SD + c];
                    dp += sh_d[r * SD + c] * sh_c[j * SD + c];
                }
                let pr = exp(p.scale * s + mask_of(b, k0 + j) - m) * inv_l;
                ds = pr * (dp - dd);
            }
            sh_s[r * SB + j] = ds;
        }
        workgroupBarrier();
        for (var cc = 0u; cc < COLS; cc++) {
            let c = part + 4u * cc;
            var g = acc[cc];
            for (var j = 0u; j < BLK; j++) {
                g += sh_s[r * SB + j] * sh_b[j * SD + c];
            }
            acc[cc] = g;
        }
    }
    if (i < p.seq) {
        for (var cc = 0u; cc < COLS; cc++) {
            let c = part + 4u * cc;
            if (c < p.dim) {
                grad_q[at(b, h, i, c)] = T(p.scale * acc[cc]);
            }
        }
    }
}

@compute @workgroup_size(BLK * 4u)
fn bwd_dkdv(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let bhk = block_of(wid, nwg);
    let b = bhk.x;
    let h = bhk.y;
    if (b >= p.batch) {
        return;
    }
    let k0 = bhk.z * BLK;
    let r = li / 4u;
    let part = li % 4u;
    let j = k0 + r;
    stage_k(b, h, k0, li);
    stage_v(b, h, k0, li);
    var dk: array<f32, COLS>;
    var dv: array<f32, COLS>;
    var q_start = 0u;
    if (p.causal != 0u) {
        q_start = k0;
    }
    for (var q0 = q_start; q0 < p.seq; q0 += BLK) {
        workgroupBarrier();
        stage_q(b, h, q0, li);
        stage_dout(b, h, q0, li);
        if (li < BLK) {
            var m = 0.0;
            var inv_l = 0.0;
            var dd = 0.0;
            if (q0 + li < p.seq) {
                m = stats[stat_at(b, h, q0 + li)];
                inv_l = 1.0 / stats[stat_at(b, h, q0 + li) + 1u];
                dd = stats[stat_at(b, h, q0 + li) + 2u];
            }
            sh_row[li * 3u] = m;
            sh_row[li * 3u + 1u] = inv_l;
            sh_row[li * 3u + 2u] = dd;
        }
        workgroupBarrier();
        // Transposed tiles: sh_p[r][i] = P[q0 + i][k0 + r], sh_s[r][i] = dS.
        for (var ii = part; ii < BLK; ii += 4u) {
            var pr = 0.0;
            var ds = 0.0;
            if (allowed(q0 + ii, j)) {
                var s = 0.0;
                var dp = 0.0;
                for (var c = 0u; c < p.dim; c++) {
                    s += sh_a[ii * SD + c] * sh_b[r * SD + c];
                    dp += sh_d[ii * SD + c] * sh_c[r * SD + c];
                }
                pr = exp(p.scale * s + mask_of(b, j) - sh_row[ii * 3u]) * sh_row[ii * 3u + 1u];
                ds = pr * (dp - sh_row[ii * 3u + 2u]);
            }
            sh_p[r * SB + ii] = pr;
            sh_s[r * SB + ii] = ds;
        }
        workgroupBarrier();
        for (var cc = 0u; cc < COLS; cc++) {
            let c = part + 4u * cc;
            var gv = dv[cc];
            var gk = dk[cc];
            for (var ii = 0u; ii < BLK; ii++) {
                gv += sh_p[r * SB + ii] * sh_d[ii * SD + c];
                gk += sh_s[r * SB + ii] * sh_a[ii * SD + c];
            }
            dv[cc] = gv;
            dk[cc] = gk;
        }
    }
    if (j < p.seq) {
        for (var cc = 0u; cc < COLS; cc++) {
            let c = part + 4u * cc;
            if (c < p.dim) {
                grad_k[at(b, h, j, c)] = T(p.scale * dk[cc]);
                grad_v[at(b, h, j, c)] = T(dv[cc]);
            }
        }
    }
}
