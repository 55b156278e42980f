// Elementwise kernels over flat f32 arrays:
//   fill:  out[i] = value
//   axpby: out[i] = alpha * a[i] + beta * b[i]   (b is not read when beta == 0)
// Residual adds, copies and scaled accumulation in the model are all axpby.

struct Params {
    n: u32,
    alpha: f32,
    beta: f32,
    value: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

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
        out[i] = p.value;
    }
}

@compute @workgroup_size(256)
fn axpby(@builtin(workgroup_id) wid: vec3<u32>,
         @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = element(wid, nwg, lid);
    if (i < p.n) {
        var v = p.alpha * a[i];
        if (p.beta != 0.0) {
            v += p.beta * b[i];
        }
        out[i] = v;
    }
}
