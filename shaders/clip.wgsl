// Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_:
//     norm = sqrt(sum of g^2 over every gradient)
//     scale = min(1, max_norm / (norm + 1e-6))        (1 when clipping is off)
// The optimizer multiplies each gradient by scale as it reads it, so the gradients are not
// rewritten. Under mixed precision the gradients arrive multiplied by the loss scale
// loss_scale[0] (1 without): the norm is taken of the unscaled gradients, and the factor
// written is scale / loss_scale[0], so the optimizer's one multiply both unscales and clips. Two levels, in a fixed order so the result is the same every run:
//   sum_squares: GROUPS workgroups stride through one chunk of the gradients, each writes
//                its partial sum to partial[offset + workgroup]
//   finish:      one workgroup adds the partials; stats = (scale / loss_scale[0], norm)
// Both reduce across the workgroup with lib/rows.wgsl's row_reduce.

struct Params {
    n: u32,
    offset: u32,
    partials: u32,
    clip: u32,
    max_norm: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// sum_squares: one chunk of the gradients, and where the workgroups' partial sums go.
@group(0) @binding(1) var<storage, read> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;
// finish: every chunk's partial sums, and (scale, norm).
@group(0) @binding(3) var<storage, read> partial_sums: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>;
// Both: the loss scale the gradients carry.
@group(0) @binding(5) var<storage, read> loss_scale: array<f32>;

const WG: u32 = 256u;
const GROUPS: u32 = 256u;

fn workgroup_sum(v: f32, li: u32) -> f32 {
    return row_reduce(ROW_SUM, vec4<f32>(v, 0.0, 0.0, 0.0), li).x;
}

@compute @workgroup_size(256)
fn sum_squares(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let unscale = 1.0 / loss_scale[0];
    var s = 0.0;
    for (var i = wid.x * WG + li; i < p.n; i += GROUPS * WG) {
        let g = grads[i] * unscale;
        s += g * g;
    }
    let total = workgroup_sum(s, li);
    if (li == 0u) {
        partial[p.offset + wid.x] = total;
    }
}

@compute @workgroup_size(256)
fn finish(@builtin(local_invocation_index) li: u32) {
    var s = 0.0;
    for (var i = li; i < p.partials; i += WG) {
        s += partial_sums[i];
    }
    let norm = sqrt(workgroup_sum(s, li));
    if (li == 0u) {
        var scale = 1.0;
        if (p.clip != 0u) {
            scale = min(1.0, p.max_norm / (norm + 1e-6));
        }
        stats[0] = scale / loss_scale[0];
        stats[1] = norm;
    }
}
