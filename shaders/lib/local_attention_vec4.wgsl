// The `vec4` variant of local_attention.wgsl's ACCESS block: the same tensors bound as arrays
// of vec4 (head dimension, strides and offsets multiples of 4), one load per four features.
// (Pasted in place of the block: this file is not a shader on its own.)
@group(0) @binding(1) var<storage, read> q: array<vec4<T>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<T>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<T>>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<T>>;
@group(0) @binding(7) var<storage, read> out_saved: array<vec4<T>>;
@group(0) @binding(8) var<storage, read> grad_out: array<vec4<T>>;
@group(0) @binding(9) var<storage, read_write> grad_q: array<vec4<T>>;
@group(0) @binding(10) var<storage, read_write> grad_k: array<vec4<T>>;
@group(0) @binding(11) var<storage, read_write> grad_v: array<vec4<T>>;

fn ld_q(e: u32, c4: u32) -> vec4<f32> {
    return vec4<f32>(q[e / 4u + c4]);
}

fn ld_k(e: u32, c4: u32) -> vec4<f32> {
    return vec4<f32>(k[e / 4u + c4]);
}

fn ld_v(e: u32, c4: u32) -> vec4<f32> {
    return vec4<f32>(v[e / 4u + c4]);
}

fn ld_out_saved(e: u32, c4: u32) -> vec4<f32> {
    return vec4<f32>(out_saved[e / 4u + c4]);
}

fn ld_grad_out(e: u32, c4: u32) -> vec4<f32> {
    return vec4<f32>(grad_out[e / 4u + c4]);
}

fn st_out(e: u32, c4: u32, x: vec4<f32>) {
    out[e / 4u + c4] = vec4<T>(x);
}

fn st_grad_q(e: u32, c4: u32, x: vec4<f32>) {
    grad_q[e / 4u + c4] = vec4<T>(x);
}

fn st_grad_k(e: u32, c4: u32, x: vec4<f32>) {
    grad_k[e / 4u + c4] = vec4<T>(x);
}

fn st_grad_v(e: u32, c4: u32, x: vec4<f32>) {
    grad_v[e / 4u + c4] = vec4<T>(x);
}
