// Rotary position embedding exactly as HuggingFace RoFormer applies it: the pair of
// features (2i, 2i+1) at position t is rotated by theta = t * 10000^(-2i/d):
//     y[2i]   = x[2i]   cos(theta) - x[2i+1] sin(theta)
//     y[2i+1] = x[2i+1] cos(theta) + x[2i]   sin(theta)
// The backward pass is the rotation by -theta (sign = -1).
// sin and cos come from a [positions, d] table laid out as HF's `embed_positions` weight:
// sin(theta_i) in column i, cos(theta_i) in column d/2 + i. It is computed in f64 on the
// host, because theta reaches 16K radians at 16K tokens, where f32 angles lose digits.
// Input and output have their own (batch, head, position) strides, so this can also
// move data between the [B, T, H, d] and [B, H, T, d] layouts.
// x and out are T (f32, or f16 in the f16 variant); the table stays f32 and the rotation
// is computed in f32.

alias T = f32;

struct Params {
    batch: u32, heads: u32, seq: u32, dim: u32,
    xb: u32, xh: u32, xt: u32, sign: f32,
    ob: u32, oh: u32, ot: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<T>;

@compute @workgroup_size(256)
fn rotate(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let half = p.dim / 2u;
    let idx = (wid.x + wid.y * nwg.x) * 256u + lid.x;
    if (idx >= p.batch * p.heads * p.seq * half) {
        return;
    }
    let i = idx % half;
    let t = (idx / half) % p.seq;
    let h = (idx / (half * p.seq)) % p.heads;
    let b = idx / (half * p.seq * p.heads);
    let s = p.sign * table[t * p.dim + i];
    let c = table[t * p.dim + half + i];
    let xi = b * p.xb + h * p.xh + t * p.xt + 2u * i;
    let oi = b * p.ob + h * p.oh + t * p.ot + 2u * i;
    let x0 = f32(x[xi]);
    let x1 = f32(x[xi + 1u]);
    out[oi] = T(x0 * c - x1 * s);
    out[oi + 1u] = T(x1 * c + x0 * s);
}
