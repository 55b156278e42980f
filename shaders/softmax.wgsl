// Row softmax with a scale, an additive mask and a causal option, and its backward.
//
// forward:  y[r, j] = softmax_j(scale * x[r, j] + mask[r / rows_per_mask, j])
//   With `causal`, row r is query q = r % tq of tq queries that are the last tq of the n
//   keys; key j is allowed when j <= q + (n - tq). Disallowed keys get probability 0.
//   The row maximum is subtracted before exp (numerically stable); maximum and sum come
//   from one pass and one reduction (the online softmax: a running sum is rescaled when
//   the running maximum grows), so x is read twice, not three times. A row whose every
//   score is -inf gives zeros; a row masked with a large finite negative value (as
//   HuggingFace does, -3.4e38) gives the same uniform row as PyTorch.
// backward: dx[r, j] = scale * y[r, j] * (dy[r, j] - sum_k dy[r, k] * y[r, k])
//
// One workgroup per row; its threads stride through the row, and reduce with
// lib/rows.wgsl's row_reduce.
// x, y, dy, dx are T (f32, or f16 in the f16 variant); the mask stays f32 (HF's -3.4e38
// is -inf in f16), and the maximum, sums and exponentials are f32.

alias T = f32;

struct Params {
    rows: u32,
    n: u32,
    rows_per_mask: u32,
    has_mask: u32,
    causal: u32,
    tq: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// forward: y from x (and mask).
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<T>;
// backward: dx from the forward's y and dy.
@group(0) @binding(4) var<storage, read> y_saved: array<T>;
@group(0) @binding(5) var<storage, read> dy: array<T>;
@group(0) @binding(6) var<storage, read_write> dx: array<T>;

// Threads per row: a power of two from 32 to 256 matched to the row length (set by the
// host), so short rows do not pay for idle threads at every barrier.
override WG: u32 = 256u;

fn score(base: u32, mask_base: u32, j: u32) -> f32 {
    var v = p.scale * f32(x[base + j]);
    if (p.has_mask != 0u) {
        v += mask[mask_base + j];
    }
    return v;
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    let mask_base = (row / p.rows_per_mask) * p.n;
    var allowed = p.n;
    if (p.causal != 0u) {
        allowed = min(p.n, row % p.tq + (p.n - p.tq) + 1u);
    }

    var part = ROW_EMPTY_MAX_SUM;
    for (var j = li; j < allowed; j += WG) {
        part = row_max_sum_extend(part, score(base, mask_base, j), j);
    }
    let ms = row_reduce(ROW_MAX_SUM, part, li);
    let m = ms.x;
    let inv = select(0.0, 1.0 / ms.y, ms.y > 0.0);

    for (var j = li; j < p.n; j += WG) {
        var prob = 0.0;
        if (j < allowed) {
            prob = exp(score(base, mask_base, j) - m) * inv;
        }
        y[base + j] = T(prob);
    }
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    var d = 0.0;
    for (var j = li; j < p.n; j += WG) {
        d += f32(y_saved[base + j]) * f32(dy[base + j]);
    }
    d = row_reduce(ROW_SUM, vec4<f32>(d, 0.0, 0.0, 0.0), li).x;
    for (var j = li; j < p.n; j += WG) {
        dx[base + j] = T(p.scale * f32(y_saved[base + j]) * (f32(dy[base + j]) - d));
    }
}
