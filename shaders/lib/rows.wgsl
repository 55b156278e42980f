
// ---- shaders/lib/rows.wgsl: the reduction across a workgroup's threads, for the
// one-workgroup-per-row kernels (softmax, layernorm, cross_entropy) and the one-workgroup
// totals (cross_entropy's loss, clip's norm): what they reduce, how two parts combine, and
// the tree through workgroup memory that combines the threads' parts (or, in the subgroup
// variant, the shuffles of lib/rows_subgroup.wgsl). The kernel defines WG, its threads per
// workgroup (a power of two, at most 256).

// What a row reduction computes, on vec4 parts:
// ROW_SUM:     componentwise sums.
// ROW_MAX_SUM: (max, sum of exp(v - max), first index of the max, -) of an online
//              softmax; an empty part is (-F32_MAX, 0, ROW_NONE, -). Indices are exact
//              as f32 below 2^24 (the ops check their row lengths).
// ROW_MOMENTS: (count, mean, sum of squared deviations, -), as Welford's algorithm keeps
//              them; an empty part is 0.
const ROW_SUM: u32 = 0u;
const ROW_MAX_SUM: u32 = 1u;
const ROW_MOMENTS: u32 = 2u;
const ROW_NONE: f32 = 16777215.0;
// f32::MAX in hex: Tint (Chromium) rejects the decimal 3.40282347e38 as not representable.
const ROW_F32_MAX: f32 = 0x1.fffffep+127f;
const ROW_EMPTY_MAX_SUM: vec4<f32> = vec4<f32>(-ROW_F32_MAX, 0.0, ROW_NONE, 0.0);

// s * exp(d), where an empty sum stays 0 even if d is +inf.
fn row_rescaled(s: f32, d: f32) -> f32 {
    return select(s * exp(d), 0.0, s == 0.0);
}

// A max-sum part extended by element `c` of value v (when the max grows, the sum is
// rescaled). The max never drops below -F32_MAX, so a row of -inf sums to 0, not NaN.
fn row_max_sum_extend(a: vec4<f32>, v: f32, c: u32) -> vec4<f32> {
    if (v > a.x || a.z == ROW_NONE) {
        let m = max(v, a.x);
        return vec4<f32>(m, row_rescaled(a.y, a.x - m) + exp(v - m), f32(c), 0.0);
    }
    return vec4<f32>(a.x, a.y + exp(v - a.x), a.z, 0.0);
}

// A moments part extended by one value (Welford).
fn row_moments_extend(a: vec4<f32>, v: f32) -> vec4<f32> {
    let count = a.x + 1.0;
    let d = v - a.y;
    let mean = a.y + d / count;
    return vec4<f32>(count, mean, a.z + d * (v - mean), 0.0);
}

// Two parts of a row combined; the max-sum index is the first maximum's, and moments
// combine as Chan, Golub and LeVeque's pairwise update.
fn row_combine(kind: u32, a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    if (kind == ROW_MAX_SUM) {
        let m = max(a.x, b.x);
        let s = row_rescaled(a.y, a.x - m) + row_rescaled(b.y, b.x - m);
        var arg = a.z;
        if (a.z == ROW_NONE || (b.z != ROW_NONE && (b.x > a.x || (b.x == a.x && b.z < a.z)))) {
            arg = b.z;
        }
        return vec4<f32>(m, s, arg, 0.0);
    }
    if (kind == ROW_MOMENTS) {
        let count = a.x + b.x;
        if (count == 0.0) {
            return a;
        }
        let d = b.y - a.y;
        let fb = b.x / count;
        return vec4<f32>(count, a.y + d * fb, a.z + b.z + d * d * a.x * fb, 0.0);
    }
    return a + b;
}

// The threads' parts combined; every thread gets the result. By default through
// workgroup memory (row_reduce_workgroup). The subgroup variant (the host's choice where the
// adapter's subgroups have one fixed size and rows are short, `ops::rows::row_layout`) runs
// each row on a workgroup that is exactly one subgroup, and combines with shuffles: its
// block (lib/rows_subgroup.wgsl) replaces this one, no barrier.
// variant row_reduce begin
fn row_reduce(kind: u32, v: vec4<f32>, li: u32) -> vec4<f32> {
    return row_reduce_workgroup(kind, v, li);
}
// variant row_reduce end

// A tree of log2(WG) steps through workgroup memory, each behind a barrier.
var<workgroup> row_red: array<vec4<f32>, 256>;

fn row_reduce_workgroup(kind: u32, v: vec4<f32>, li: u32) -> vec4<f32> {
    row_red[li] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            row_red[li] = row_combine(kind, row_red[li], row_red[li + s]);
        }
        workgroupBarrier();
    }
    let r = row_red[0];
    workgroupBarrier();
    return r;
}
