// Dynamic loss scaling for mixed-precision training, the update of
// torch.cuda.amp.GradScaler (torch's _amp_update_scale_), one thread, after gradient
// clipping has measured the step:
//     state = (scale, good_steps, scale_used, skipped)
//     stats = (clip factor, norm of the unscaled gradients)      (what clip.wgsl wrote)
// The step's gradients carried state[0]. A non-finite norm means some f16 gradient
// overflowed (or the sum of squares did): the optimizer skipped the step (adamw.wgsl tests
// the same bits), so the scale is multiplied by backoff and the count of good steps starts
// again. A finite norm counts one more good step; after `interval` in a row the scale is
// multiplied by growth, unless that would overflow f32, and the count starts again.
// scale_used and skipped record this step for the step's metrics.
// unscale: grads *= 1 / state[0], for a backward pass without an optimizer step (a
// training step folds the division into the clipping factor instead).

struct Params {
    growth: f32,
    backoff: f32,
    interval: u32,
    n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> stats: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;

// Exponent all ones: infinity or NaN (a bit test, which fast-math cannot fold away).
fn non_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}

@compute @workgroup_size(1)
fn update() {
    let scale = state[0];
    state[2] = scale;
    if (non_finite(stats[1])) {
        state[0] = scale * p.backoff;
        state[1] = 0.0;
        state[3] = 1.0;
        return;
    }
    state[3] = 0.0;
    let good = state[1] + 1.0;
    if (good >= f32(p.interval)) {
        let grown = scale * p.growth;
        if (!non_finite(grown)) {
            state[0] = grown;
        }
        state[1] = 0.0;
    } else {
        state[1] = good;
    }
}

@compute @workgroup_size(256)
fn unscale(@builtin(workgroup_id) wid: vec3<u32>,
           @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (i < p.n) {
        grads[i] = grads[i] * (1.0 / state[0]);
    }
}
