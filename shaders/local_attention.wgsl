// Sliding-window ("local") softmax attention with global tokens, without a T x T matrix:
//     out_i = sum_{j in N(i)} softmax_j(scale * q_i . k_j + mask_j) v_j
// where N(i), the keys query i sees, is (w = window, g = globals)
//     not causal: |i - j| <= w, or i < g (a global query sees every key), or j < g;
//     causal:     j <= i, and i - j <= w or j < g (global tokens are only seen).
// With w >= T and g = 0 it is plain softmax attention (the fused softmax family runs these
// kernels so on CPU adapters).
// q, k, v, out and their gradients share one layout (strides sb, sh, st; features
// contiguous) and one head dimension. RoPE, when used, is applied to q and k beforehand.
//
// Every row's neighbours are two index ranges, [0, pre) then [lo, hi): the global tokens
// before the window, then the window (for a global query: everything). So the work is
// T * (2w + 1 + g) dot products (plus g * T for the global rows), never T * T.
//
// An invocation owns ROWS consecutive rows (queries; keys in bwd_dkdv) and walks the union of
// their neighbours, each row skipping those it does not see: every neighbour's load serves
// all its rows. The rows' registers are Rows values, one per feature (f32 for one row, a
// vec4 for four: see the ROWS block), so the same code runs both forms.
// forward:  over its keys, an online softmax per row (running max m and sum l); saves m
//           and l per query (stats[.., 0..2]; not m + log(l), which rounds to m when every
//           key the row sees is padded, -3.4e38).
// bwd_dq:   D = dout . out per query (saved in stats[.., 2]), then over its keys
//           P = exp(S - m) / l, dP = dout . v, dS = P (dP - D), dq += scale dS k.
// bwd_dkdv: over the queries that see its keys (the same sets, transposed): dv += P dout,
//           dk += scale dS q. Runs after bwd_dq (it reads D).
// No workgroup memory and no barrier: each invocation keeps its rows in registers (head
// dimensions up to MAX_D) and each gradient row has one owner.
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

// Variant constant: the largest head dimension (registers per row: MAX_D floats).
const MAX_D: u32 = 64u; // variant
const D4: u32 = MAX_D / 4u;
const WG: u32 = 64u;
// f32::MAX in hex: Tint (Chromium) rejects the decimal 3.40282347e38 as not representable.
const F32_MAX: f32 = 0x1.fffffep+127f;

// The rows an invocation owns: ROWS of them, and the types that hold one value per row.
// This form has one row; the `four_rows` variant has four, as vec4s (a lane per row): each
// neighbour's loads then serve four rows, which is what a CPU adapter needs (its loads are
// a loop over the SIMD lanes).
// variant ROWS begin
const ROWS: u32 = 1u;
// A value per row, an index per row, a flag per row.
alias Rows = f32;
alias RowIds = u32;
alias RowFlags = bool;
// Features 4 c4 .. 4 c4 + 3 of every row: chunk[f] is feature f's Rows.
alias Chunk = vec4<f32>;

// Rows first, first + 1, ..., the ones past `last` repeating it.
fn row_ids(first: u32, last: u32) -> u32 {
    return first;
}

// Row r's index.
fn row_id(ids: u32, r: u32) -> u32 {
    return ids;
}

// Row r's value.
fn row_value(x: f32, r: u32) -> f32 {
    return x;
}

// Rows from the rows' values (a, b, c, d for rows 0 .. 3; those past ROWS ignored).
fn rows_of(a: f32, b: f32, c: f32, d: f32) -> f32 {
    return a;
}

// The chunk from each row's four features (a, b, c, d for rows 0 .. 3).
fn chunk_by_row(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> vec4<f32> {
    return a;
}

// The chunk from its four features' Rows.
fn chunk_by_feature(a: f32, b: f32, c: f32, d: f32) -> vec4<f32> {
    return vec4<f32>(a, b, c, d);
}

// Row r's four features.
fn row_features(x: vec4<f32>, r: u32) -> vec4<f32> {
    return x;
}
// variant ROWS end

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

// Whether query i sees key j, row by row.
fn sees(i: RowIds, j: RowIds) -> RowFlags {
    let g = RowIds(p.globals);
    if (p.causal != 0u) {
        return (j <= i) & ((i - j <= RowIds(p.window)) | (j < g));
    }
    return (max(i, j) - min(i, j) <= RowIds(p.window)) | (i < g) | (j < g);
}

// Neighbours: [0, pre) then [lo, hi).
struct Span {
    pre: u32,
    lo: u32,
    hi: u32,
}

// The n-th neighbour (n < count(s)).
fn nth(s: Span, n: u32) -> u32 {
    return select(s.lo + (n - s.pre), n, n < s.pre);
}

fn count(s: Span) -> u32 {
    return s.pre + (s.hi - s.lo);
}

// The keys some query of i0 ..= i1 sees.
fn keys_of(i0: u32, i1: u32) -> Span {
    if (p.causal == 0u && i0 < p.globals) {
        return Span(0u, 0u, p.seq);
    }
    let lo = i0 - min(i0, p.window);
    var hi = min(p.seq, i1 + p.window + 1u);
    if (p.causal != 0u) {
        hi = i1 + 1u;
    }
    return Span(min(p.globals, lo), lo, hi);
}

// The queries that see some key of j0 ..= j1.
fn queries_of(j0: u32, j1: u32) -> Span {
    if (j0 < p.globals) {
        return Span(0u, select(0u, j0, p.causal != 0u), p.seq);
    }
    let hi = min(p.seq, j1 + p.window + 1u);
    if (p.causal != 0u) {
        return Span(0u, j0, hi);
    }
    let lo = j0 - min(j0, p.window);
    return Span(min(p.globals, lo), lo, hi);
}

// (batch, head, first row) of this invocation's rows, or batch >= p.batch past the end.
fn first_row(wid: vec3<u32>, nwg: vec3<u32>, li: u32) -> vec3<u32> {
    let idx = (wid.x + wid.y * nwg.x) * WG + li;
    let groups = (p.seq + ROWS - 1u) / ROWS;
    let h = (idx / groups) % p.heads;
    return vec3<u32>(idx / (groups * p.heads), h, (idx % groups) * ROWS);
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let r0 = first_row(wid, nwg, li);
    let b = r0.x;
    let h = r0.y;
    let i0 = r0.z;
    if (b >= p.batch) {
        return;
    }
    let last = min(i0 + ROWS, p.seq) - 1u;
    let iv = row_ids(i0, last);
    let qe = array<u32, 4>(row_at(b, h, row_id(iv, 0u)), row_at(b, h, row_id(iv, 1u)),
                           row_at(b, h, row_id(iv, 2u)), row_at(b, h, row_id(iv, 3u)));
    // q (scaled) and the output's accumulator, feature by feature.
    var qf: array<Rows, MAX_D>;
    var acc: array<Rows, MAX_D>;
    for (var c4 = 0u; c4 < D4; c4++) {
        let c = 4u * c4;
        if (live(c4)) {
            let x = chunk_by_row(ld_q(qe[0], c4), ld_q(qe[1], c4), ld_q(qe[2], c4),
                                 ld_q(qe[3], c4));
            qf[c] = x[0] * p.scale;
            qf[c + 1u] = x[1] * p.scale;
            qf[c + 2u] = x[2] * p.scale;
            qf[c + 3u] = x[3] * p.scale;
        }
        acc[c] = Rows(0.0);
        acc[c + 1u] = Rows(0.0);
        acc[c + 2u] = Rows(0.0);
        acc[c + 3u] = Rows(0.0);
    }
    var m = Rows(-F32_MAX);
    var l = Rows(0.0);
    let s = keys_of(i0, last);
    for (var n = 0u; n < count(s); n++) {
        let j = nth(s, n);
        let ke = row_at(b, h, j);
        var sc = Rows(mask_of(b, j));
        for (var c4 = 0u; c4 < D4; c4++) {
            let c = 4u * c4;
            if (live(c4)) {
                let kk = ld_k(ke, c4);
                sc += (qf[c] * kk.x + qf[c + 1u] * kk.y) + (qf[c + 2u] * kk.z + qf[c + 3u] * kk.w);
            }
        }
        let ok = sees(iv, RowIds(j));
        let m_new = select(m, max(m, sc), ok);
        let alpha = exp(m - m_new);
        let pj = select(Rows(0.0), exp(sc - m_new), ok);
        l = alpha * l + pj;
        m = m_new;
        for (var c4 = 0u; c4 < D4; c4++) {
            let c = 4u * c4;
            if (live(c4)) {
                let vv = ld_v(ke, c4);
                acc[c] = alpha * acc[c] + pj * vv.x;
                acc[c + 1u] = alpha * acc[c + 1u] + pj * vv.y;
                acc[c + 2u] = alpha * acc[c + 2u] + pj * vv.z;
                acc[c + 3u] = alpha * acc[c + 3u] + pj * vv.w;
            }
        }
    }
    // Every row sees itself: l > 0.
    let inv = 1.0 / l;
    for (var r = 0u; r < ROWS; r++) {
        if (i0 + r <= last) {
            for (var c4 = 0u; c4 < D4; c4++) {
                let c = 4u * c4;
                if (live(c4)) {
                    let x = chunk_by_feature(acc[c] * inv, acc[c + 1u] * inv,
                                             acc[c + 2u] * inv, acc[c + 3u] * inv);
                    st_out(row_at(b, h, i0 + r), c4, row_features(x, r));
                }
            }
            stats[stat_at(b, h, i0 + r)] = row_value(m, r);
            stats[stat_at(b, h, i0 + r) + 1u] = row_value(l, r);
        }
    }
}

@compute @workgroup_size(WG)
fn bwd_dq(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let r0 = first_row(wid, nwg, li);
    let b = r0.x;
    let h = r0.y;
    let i0 = r0.z;
    if (b >= p.batch) {
        return;
    }
    let last = min(i0 + ROWS, p.seq) - 1u;
    let iv = row_ids(i0, last);
    let qe = array<u32, 4>(row_at(b, h, row_id(iv, 0u)), row_at(b, h, row_id(iv, 1u)),
                           row_at(b, h, row_id(iv, 2u)), row_at(b, h, row_id(iv, 3u)));
    // q (scaled), dout and dq's accumulator, feature by feature; D = dout . out per row.
    var qf: array<Rows, MAX_D>;
    var gf: array<Rows, MAX_D>;
    var acc: array<Rows, MAX_D>;
    var dd = Rows(0.0);
    for (var c4 = 0u; c4 < D4; c4++) {
        let c = 4u * c4;
        if (live(c4)) {
            let x = chunk_by_row(ld_q(qe[0], c4), ld_q(qe[1], c4), ld_q(qe[2], c4),
                                 ld_q(qe[3], c4));
            let g = chunk_by_row(ld_grad_out(qe[0], c4), ld_grad_out(qe[1], c4),
                                 ld_grad_out(qe[2], c4), ld_grad_out(qe[3], c4));
            let o = chunk_by_row(ld_out_saved(qe[0], c4), ld_out_saved(qe[1], c4),
                                 ld_out_saved(qe[2], c4), ld_out_saved(qe[3], c4));
            qf[c] = x[0] * p.scale;
            qf[c + 1u] = x[1] * p.scale;
            qf[c + 2u] = x[2] * p.scale;
            qf[c + 3u] = x[3] * p.scale;
            gf[c] = g[0];
            gf[c + 1u] = g[1];
            gf[c + 2u] = g[2];
            gf[c + 3u] = g[3];
            dd += (g[0] * o[0] + g[1] * o[1]) + (g[2] * o[2] + g[3] * o[3]);
        }
        acc[c] = Rows(0.0);
        acc[c + 1u] = Rows(0.0);
        acc[c + 2u] = Rows(0.0);
        acc[c + 3u] = Rows(0.0);
    }
    let st = array<u32, 4>(stat_at(b, h, row_id(iv, 0u)), stat_at(b, h, row_id(iv, 1u)),
                           stat_at(b, h, row_id(iv, 2u)), stat_at(b, h, row_id(iv, 3u)));
    let m = rows_of(stats[st[0]], stats[st[1]], stats[st[2]], stats[st[3]]);
    let inv_l = 1.0 / rows_of(stats[st[0] + 1u], stats[st[1] + 1u], stats[st[2] + 1u],
                              stats[st[3] + 1u]);
    for (var r = 0u; r < ROWS; r++) {
        if (i0 + r <= last) {
            stats[stat_at(b, h, i0 + r) + 2u] = row_value(dd, r);
        }
    }
    let s = keys_of(i0, last);
    for (var n = 0u; n < count(s); n++) {
        let j = nth(s, n);
        let ke = row_at(b, h, j);
        var sc = Rows(mask_of(b, j));
        var dp = Rows(0.0);
        var kv: array<vec4<f32>, D4>;
        for (var c4 = 0u; c4 < D4; c4++) {
            let c = 4u * c4;
            if (live(c4)) {
                let kk = ld_k(ke, c4);
                let vv = ld_v(ke, c4);
                kv[c4] = kk;
                sc += (qf[c] * kk.x + qf[c + 1u] * kk.y) + (qf[c + 2u] * kk.z + qf[c + 3u] * kk.w);
                dp += (gf[c] * vv.x + gf[c + 1u] * vv.y) + (gf[c + 2u] * vv.z + gf[c + 3u] * vv.w);
            }
        }
        let pr = select(Rows(0.0), exp(sc - m) * inv_l, sees(iv, RowIds(j)));
        let ds = pr * (dp - dd);
        for (var c4 = 0u; c4 < D4; c4++) {
            let c = 4u * c4;
            if (live(c4)) {
                let kk = kv[c4];
                acc[c] += ds * kk.x;
                acc[c + 1u] += ds * kk.y;
                acc[c + 2u] += ds * kk.z;
                acc[c + 3u] += ds * kk.w;
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        if (i0 + r <= last) {
            for (var c4 = 0u; c4 < D4; c4++) {
                let c = 4u * c4;
                if (live(c4)) {
                    let x = chunk_by_feature(acc[c], acc[c + 1u], acc[c + 2u], acc[c + 3u]);
                    st_grad_q(row_at(b, h, i0 + r), c4, row_features(x, r) * p.scale);
                }
            }
        }
    }
}

@compute @workgroup_size(WG)
fn bwd_dkdv(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let r0 = first_row(wid, nwg, li);
    let b = r0.x;
    let h = r0.y;
    let j0 = r0.z;
    if (b >= p.batch) {
        return;
    }
    let last = min(j0 + ROWS, p.seq) - 1u;
    let jv = row_ids(j0, last);
    let ke = array<u32, 4>(row_at(b, h, row_id(jv, 0u)), row_at(b, h, row_id(jv, 1u)),
                           row_at(b, h, row_id(jv, 2u)), row_at(b, h, row_id(jv, 3u)));
    // k (scaled), v and the accumulators of dk and dv, feature by feature.
    var kf: array<Rows, MAX_D>;
    var vf: array<Rows, MAX_D>;
    var dk: array<Rows, MAX_D>;
    var dv: array<Rows, MAX_D>;
    for (var c4 = 0u; c4 < D4; c4++) {
        let c = 4u * c4;
        if (live(c4)) {
            let x = chunk_by_row(ld_k(ke[0], c4), ld_k(ke[1], c4), ld_k(ke[2], c4),
                                 ld_k(ke[3], c4));
            let y = chunk_by_row(ld_v(ke[0], c4), ld_v(ke[1], c4), ld_v(ke[2], c4),
                                 ld_v(ke[3], c4));
            kf[c] = x[0] * p.scale;
            kf[c + 1u] = x[1] * p.scale;
            kf[c + 2u] = x[2] * p.scale;
            kf[c + 3u] = x[3] * p.scale;
            vf[c] = y[0];
            vf[c + 1u] = y[1];
            vf[c + 2u] = y[2];
            vf[c + 3u] = y[3];
        }
        dk[c] = Rows(0.0);
        dk[c + 1u] = Rows(0.0);
        dk[c + 2u] = Rows(0.0);
        dk[c + 3u] = Rows(0.0);
        dv[c] = Rows(0.0);
        dv[c + 1u] = Rows(0.0);
        dv[c + 2u] = Rows(0.0);
        dv[c + 3u] = Rows(0.0);
    }
    let mj = rows_of(mask_of(b, row_id(jv, 0u)), mask_of(b, row_id(jv, 1u)),
                     mask_of(b, row_id(jv, 2u)), mask_of(b, row_id(jv, 3u)));
    let s = queries_of(j0, last);
    for (var n = 0u; n < count(s); n++) {
        let i = nth(s, n);
        let qe = row_at(b, h, i);
        let st = stat_at(b, h, i);
        let m = stats[st];
        let inv_l = 1.0 / stats[st + 1u];
        let dd = stats[st + 2u];
        var sc = mj;
        var dp = Rows(0.0);
        var qv: array<vec4<f32>, D4>;
        var gv: array<vec4<f32>, D4>;
        for (var c4 = 0u; c4 < D4; c4++) {
            let c = 4u * c4;
            if (live(c4)) {
                let qq = ld_q(qe, c4);
                let gg = ld_grad_out(qe, c4);
                qv[c4] = qq;
                gv[c4] = gg;
                sc += (kf[c] * qq.x + kf[c + 1u] * qq.y) + (kf[c + 2u] * qq.z + kf[c + 3u] * qq.w);
                dp += (vf[c] * gg.x + vf[c + 1u] * gg.y) + (vf[c + 2u] * gg.z + vf[c + 3u] * gg.w);
            }
        }
        let pr = select(Rows(0.0), exp(sc - m) * inv_l, sees(RowIds(i), jv));
        let ds = pr * (dp - dd);
        for (var c4 = 0u; c4 < D4; c4++) {
            let c = 4u * c4;
            if (live(c4)) {
                let qq = qv[c4];
                let gg = gv[c4];
                dv[c] += pr * gg.x;
                dv[c + 1u] += pr * gg.y;
                dv[c + 2u] += pr * gg.z;
                dv[c + 3u] += pr * gg.w;
                dk[c] += ds * qq.x;
                dk[c + 1u] += ds * qq.y;
                dk[c + 2u] += ds * qq.z;
                dk[c + 3u] += ds * qq.w;
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        if (j0 + r <= last) {
            for (var c4 = 0u; c4 < D4; c4++) {
                let c = 4u * c4;
                if (live(c4)) {
                    let x = chunk_by_feature(dk[c], dk[c + 1u], dk[c + 2u], dk[c + 3u]);
                    let y = chunk_by_feature(dv[c], dv[c + 1u], dv[c + 2u], dv[c + 3u]);
                    st_grad_k(row_at(b, h, j0 + r), c4, row_features(x, r) * p.scale);
                    st_grad_v(row_at(b, h, j0 + r), c4, row_features(y, r));
                }
            }
        }
    }
}
