// Microbenchmarks of the adapter itself, the ceilings benchmark figures are stated against.
// Both are timed like every kernel (timestamp queries where the adapter has them).
// fma_rate: each thread runs `iters` rounds of two dependent vec4 FMA chains (16 FLOPs a
//           round) and writes one value, so nothing can be optimised away.
// copy:     dst = src over `vec4s` vec4s, one per thread: the bandwidth a kernel that reads
//           and writes each byte once can reach.

struct Params {
    iters: u32,
    vec4s: u32,
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn fma_rate(@builtin(global_invocation_id) gid: vec3<u32>,
            @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 256u;
    var a = vec4<f32>(f32(id & 1023u) * 1e-3, 0.5, 0.25, 0.125);
    var b = vec4<f32>(0.75, f32(id & 511u) * 1e-3, 0.375, 0.625);
    let m = vec4<f32>(0.99999);
    let c = vec4<f32>(1e-5);
    for (var i = 0u; i < p.iters; i++) {
        a = fma(a, m, c);
        b = fma(b, m, c);
    }
    out[id] = dot(a, b);
}

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 256u;
    if (id < p.vec4s) {
        dst[id] = src[id];
    }
}
