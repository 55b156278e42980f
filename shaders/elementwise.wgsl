// Elementwise kernels over flat float arrays, inputs (a, b) of type In and the output of
// type Out, each f32 or f16 (a variant each; the arithmetic is f32). So a copy from one
// type to the other is axpby with alpha = 1, beta = 0, and unscaling f16 gradients into
// f32 ones is the same call with alpha = 1 / scale.
//   fill:       out[i] = value
//   axpby:      out[i] = alpha * a[i] + beta * b[i]   (b is not read when beta == 0)
//   accumulate: out[i] += alpha * a[i]
//               (in place: a buffer cannot be bound read-only and read-write at once)
//   gather_rows:  out[r, c] = a[r * stride + c]            (r < n / cols, c < cols)
//   scatter_rows: out[r * stride + c] = beta * out[..] + a[r, c]
//   gather_positions: out[r, c] = a[r * stride + positions[r] * cols + c]
//                 (positions clamped to the rows' length, stride / cols)
// Residual adds, copies and gradient accumulation are axpby and accumulate; the rows pair
// picks the first token of each sequence for the classifier, and puts its gradient back;
// gather_positions picks one token per sequence at a position given per run (the multiple
// choice head's summary token).

alias In = f32;
alias Out = f32;

struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    value: f32,
    cols: u32,
    stride: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<In>;
@group(0) @binding(2) var<storage, read> b: array<In>;
@group(0) @binding(3) var<storage, read_write> out: array<Out>;
@group(0) @binding(4) var<storage, read> positions: array<u32>;

const WG: u32 = 256u;

// Flat element index of a 1-D launch spread over x and y (x is capped at 65535 groups).
fn element(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid.x;
}

@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < p.n) {
        out[i] = Out(p.value);
    }
}

@compute @workgroup_size(256)
fn axpby(@builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < p.n) {
        var v = p.alpha * f32(a[i]);
        if (p.beta != 0.0) {
            v += p.beta * f32(b[i]);
        }
        out[i] = Out(v);
    }
}

@compute @workgroup_size(256)
fn accumulate(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < p.n) {
        out[i] = Out(f32(out[i]) + p.alpha * f32(a[i]));
    }
}

@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < p.n) {
        out[i] = Out(a[(i / p.cols) * p.stride + i % p.cols]);
    }
}

@compute @workgroup_size(256)
fn scatter_rows(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < p.n) {
        let o = (i / p.cols) * p.stride + i % p.cols;
        var v = f32(a[i]);
        if (p.beta != 0.0) {
            v += p.beta * f32(out[o]);
        }
        out[o] = Out(v);
    }
}

@compute @workgroup_size(256)
fn gather_positions(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < p.n) {
        let r = i / p.cols;
        let position = min(positions[r], p.stride / p.cols - 1u);
        out[i] = Out(a[r * p.stride + position * p.cols + i % p.cols]);
    }
}
