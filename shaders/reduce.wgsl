// Column sums of a row-major [rows, cols] matrix:
//     out[c] = beta * out[c] + sum_r x[r, c]
// The bias gradient of a linear layer is the column sum of its output gradient over all
// tokens; matmul's backward also uses it to sum per-batch weight gradients.
// A workgroup owns 64 columns of one chunk of rows (workgroup z); its 4 rows of threads
// stride through the chunk, then add up (lib/columns.wgsl). With several chunks, each
// writes its own row of partial sums, `out[chunk, c]`, which a second dispatch sums the same
// way: a fixed order, so the result is deterministic.

// x is In, out is Out (each f32 or f16); the sums are f32.
alias In = f32;
alias Out = f32;

struct Params {
    rows: u32,
    cols: u32,
    beta: f32,
    rows_per_chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<In>;
@group(0) @binding(2) var<storage, read_write> out: array<Out>;

@compute @workgroup_size(64, 4, 1)
fn sum_rows(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let col = (wid.x + wid.y * nwg.x) * 64u + lid.x;
    let first = wid.z * p.rows_per_chunk;
    let last = min(p.rows, first + p.rows_per_chunk);
    var s = 0.0;
    if (col < p.cols) {
        for (var r = first + lid.y; r < last; r += 4u) {
            s += f32(x[r * p.cols + col]);
        }
    }
    var t = column_reduce(vec2<f32>(s, 0.0), lid).x;
    let at = wid.z * p.cols + col;
    if (lid.y == 0u && col < p.cols) {
        if (p.beta != 0.0) {
            t += p.beta * f32(out[at]);
        }
        out[at] = Out(t);
    }
}
