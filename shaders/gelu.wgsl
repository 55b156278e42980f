// GELU in its exact (erf) form, HuggingFace's "gelu":
//     forward:  y  = 0.5 x (1 + erf(x / sqrt(2)))
//     backward: dx = dy (0.5 (1 + erf(x / sqrt(2))) + x exp(-x^2 / 2) / sqrt(2 pi))
// erf_f32, gelu_f32 and the constants come from shaders/lib/gelu.wgsl, appended to this file.
// Tensors are T (f32, or f16 in the f16 variant); the arithmetic is f32 either way.

alias T = f32;

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The forward's input (both passes read it).
@group(0) @binding(1) var<storage, read> x: array<T>;
// forward: y.
@group(0) @binding(2) var<storage, read_write> y: array<T>;
// backward: dx from dy.
@group(0) @binding(3) var<storage, read> dy: array<T>;
@group(0) @binding(4) var<storage, read_write> dx: array<T>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid.x;
}

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let v = f32(x[i]);
        y[i] = T(gelu_f32(v));
    }
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let v = f32(x[i]);
        let cdf = 0.5 * (1.0 + erf_f32(v * FRAC_1_SQRT_2));
        let pdf = exp(-0.5 * v * v) * FRAC_1_SQRT_2PI;
        dx[i] = T(f32(dy[i]) * (cdf + v * pdf));
    }
}
