// LayerNorm over the last dimension (rows of n), as torch.nn.LayerNorm:
//   forward:         mean, rstd = 1 / sqrt(var + eps) (biased variance, from one pass:
//                    Welford per thread, Chan et al.'s pairwise combine across threads);
//                    y = (x - mean) * rstd * gamma + beta; stats[r] = (mean, rstd)
//   forward_residual: the same on s = x + residual, also writing s (a post-LN block's
//                    residual add and LayerNorm in one pass over memory)
//   backward:        g = dy * gamma, xhat = (x - mean) * rstd,
//                    dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))
//   backward_params: dgamma[j] = sum_r dy[r, j] xhat[r, j],  dbeta[j] = sum_r dy[r, j]
// forward and backward run one workgroup per row (reducing with lib/rows.wgsl's
// row_reduce); backward_params one per 64 columns (lib/columns.wgsl's column_reduce).
// Tensors are T (f32, or f16 in the f16 variant), the parameter gradients Out (their
// partial sums stay f32); moments, statistics and sums are f32.

alias T = f32;
alias Out = f32;

struct Params {
    rows: u32,
    n: u32,
    eps: f32,
    accumulate: u32,
    // backward_params: rows one workgroup sums (its chunk is workgroup z; each chunk writes
    // row z of partial sums, which reduce's sum_rows then adds up)
    rows_per_chunk: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The forward's input (for forward_residual, the first term of the sum), and the weight.
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> gamma: array<T>;
// forward: y and the row statistics from x, gamma, beta.
@group(0) @binding(3) var<storage, read> beta: array<T>;
@group(0) @binding(4) var<storage, read_write> y: array<T>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
// forward_residual also adds the residual to x, and keeps the sum.
@group(0) @binding(6) var<storage, read> residual: array<T>;
@group(0) @binding(7) var<storage, read_write> sum: array<T>;
// backward: dx from x, gamma, the saved statistics and dy.
@group(0) @binding(8) var<storage, read> stats_saved: array<f32>;
@group(0) @binding(9) var<storage, read> dy: array<T>;
@group(0) @binding(10) var<storage, read_write> dx: array<T>;
// backward_params: the parameter gradients from x, the statistics and dy.
@group(0) @binding(11) var<storage, read_write> dgamma: array<Out>;
@group(0) @binding(12) var<storage, read_write> dbeta: array<Out>;

// Threads per row: a power of two from 32 to 256 matched to the row length (set by the
// host), so short rows do not pay for idle threads at every barrier.
override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    var part = vec4<f32>(0.0);
    for (var j = li; j < p.n; j += WG) {
        part = row_moments_extend(part, f32(x[base + j]));
    }
    let moments = row_reduce(ROW_MOMENTS, part, li);
    let mean = moments.y;
    let rstd = inverseSqrt(moments.z / moments.x + p.eps);
    for (var j = li; j < p.n; j += WG) {
        y[base + j] = T((f32(x[base + j]) - mean) * rstd * f32(gamma[j]) + f32(beta[j]));
    }
    if (li == 0u) {
        stats[2u * row] = mean;
        stats[2u * row + 1u] = rstd;
    }
}

@compute @workgroup_size(WG)
fn forward_residual(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    var part = vec4<f32>(0.0);
    for (var j = li; j < p.n; j += WG) {
        let v = f32(x[base + j]) + f32(residual[base + j]);
        sum[base + j] = T(v);
        part = row_moments_extend(part, v);
    }
    let moments = row_reduce(ROW_MOMENTS, part, li);
    let mean = moments.y;
    let rstd = inverseSqrt(moments.z / moments.x + p.eps);
    for (var j = li; j < p.n; j += WG) {
        // Each thread reads back only the sums it wrote itself.
        y[base + j] = T((f32(sum[base + j]) - mean) * rstd * f32(gamma[j]) + f32(beta[j]));
    }
    if (li == 0u) {
        stats[2u * row] = mean;
        stats[2u * row + 1u] = rstd;
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
    let mean = stats_saved[2u * row];
    let rstd = stats_saved[2u * row + 1u];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = li; j < p.n; j += WG) {
        let g = f32(dy[base + j]) * f32(gamma[j]);
        sg += g;
        sgx += g * (f32(x[base + j]) - mean) * rstd;
    }
    let means = row_reduce(ROW_SUM, vec4<f32>(sg, sgx, 0.0, 0.0), li).xy / f32(p.n);
    let mg = means.x;
    let mgx = means.y;
    for (var j = li; j < p.n; j += WG) {
        let g = f32(dy[base + j]) * f32(gamma[j]);
        let xhat = (f32(x[base + j]) - mean) * rstd;
        dx[base + j] = T(rstd * (g - mg - xhat * mgx));
    }
}

@compute @workgroup_size(64, 4, 1)
fn backward_params(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = (wid.x + wid.y * nwg.x) * 64u + lid.x;
    let first = wid.z * p.rows_per_chunk;
    let last = min(p.rows, first + p.rows_per_chunk);
    var sg = 0.0;
    var sb = 0.0;
    if (col < p.n) {
        for (var r = first + lid.y; r < last; r += 4u) {
            let g = f32(dy[r * p.n + col]);
            let xhat = (f32(x[r * p.n + col]) - stats_saved[2u * r]) * stats_saved[2u * r + 1u];
            sg += g * xhat;
            sb += g;
        }
    }
    var sums = column_reduce(vec2<f32>(sg, sb), lid);
    let at = wid.z * p.n + col;
    if (lid.y == 0u && col < p.n) {
        if (p.accumulate != 0u) {
            sums += vec2<f32>(f32(dgamma[at]), f32(dbeta[at]));
        }
        dgamma[at] = Out(sums.x);
        dbeta[at] = Out(sums.y);
    }
}
