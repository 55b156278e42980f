// AdamW as torch.optim.AdamW (decoupled weight decay), elementwise over flat arrays:
//     g  = grad * scale[0]                 (gradient clipping writes scale = (factor, norm))
//     p *= decay                           (decay = 1 - lr * weight_decay)
//     m  = m + w1 (g - m)                  (torch's lerp, w1 = 1 - beta1)
//     v  = beta2 v + w2 g^2                (w2 = 1 - beta2)
//     p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)
// with w1, w2, step_size = lr / (1 - beta1^t) and bc2_sqrt = sqrt(1 - beta2^t) computed on
// the host in f64, as torch does in Python floats (1 - f32(0.999) would be 1.3e-5 off).
// When the gradient norm scale[1] is infinite or NaN the step is skipped entirely:
// parameters and moments keep their last good values, and the trainer reports the step.

struct Params {
    n: u32,
    decay: f32,
    beta2: f32,
    w1: f32,
    w2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> scale: array<f32>;
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn step(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (i >= p.n) {
        return;
    }
    // Exponent all ones: infinity or NaN (a bit test, which fast-math cannot fold away).
    if ((bitcast<u32>(scale[1]) & 0x7f800000u) == 0x7f800000u) {
        return;
    }
    let g = grad[i] * scale[0];
    let mi = m[i] + p.w1 * (g - m[i]);
    let vi = p.beta2 * v[i] + p.w2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * p.decay - p.step_size * mi / (sqrt(vi) / p.bc2_sqrt + p.eps);
}
