// Causal linear attention with RoPE (RoFormer eq. 19) as a recurrence, for generation with a
// linear-attention model: each sequence and head keeps, over its tokens so far,
//   S = Σ_n R_n φ(k_n) v_nᵀ   ([d, dv])   and   z = Σ_n φ(k_n)   ([d]),
// and a new token m adds its own terms, then reads
//   out_m = (R_m φ(q_m))ᵀ S / (φ(q_m)ᵀ z + eps),
// with φ(x) = elu(x) + 1 and R_n RoPE's rotation at position n: the function the chunked
// and scan kernels compute over a whole sequence, at a cost per token and a state that do
// not grow with the position.
//
// step: one workgroup per (sequence b, head h) walks that sequence's first counts[b] new
// tokens in order, the first at position starts[b]; the rest of the block (padding past a
// shorter prompt, a finished sequence's step) leaves the state as it is. Thread i owns the
// state's columns i, i + WG, ... (read and written by it alone, in storage) and the
// normaliser's rows i, i + WG, ...; z, which every thread reads, is held in workgroup memory
// for the walk (a workgroup barrier orders that, not storage), then stored back.
// q, k, v and out are T (f32, or f16 in the f16 variant); the state, the RoPE table and all
// arithmetic are f32. Forward only: generation trains nothing.

alias T = f32;

struct Params {
    batch: u32, new_tokens: u32, heads: u32, dim: u32,
    dim_v: u32, eps: f32, _p0: u32, _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [batch, new_tokens, heads, dim] (v and out: dim_v).
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
// RoPE's [positions, dim] table in HF's layout: sin in column i, cos in column dim/2 + i.
@group(0) @binding(4) var<storage, read> table: array<f32>;
// [batch]: the position of each row's first new token, and how many of its new tokens count.
@group(0) @binding(5) var<storage, read> starts: array<u32>;
@group(0) @binding(6) var<storage, read> counts: array<u32>;
// [batch, heads, dim · dim_v + dim]: each sequence and head's S (row-major [dim, dim_v]),
// then its z (one buffer: eight storage bindings at most).
@group(0) @binding(7) var<storage, read_write> state: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<T>;

const WG: u32 = 128u;
// Head dimensions up to MAX_D (the linear attention kernels' widest).
const MAX_D: u32 = 256u;

// The token's φ(q), φ(k) and their rotations.
var<workgroup> fq: array<f32, MAX_D>;
var<workgroup> fk: array<f32, MAX_D>;
var<workgroup> rq: array<f32, MAX_D>;
var<workgroup> rk: array<f32, MAX_D>;
// z, for the walk.
var<workgroup> zs: array<f32, MAX_D>;
// The row's count of new tokens, loaded so every thread sees it as uniform (the loop over
// tokens holds barriers).
var<workgroup> count_sh: u32;

// elu(x) + 1.
fn phi(x: f32) -> f32 {
    return select(exp(x), x + 1.0, x > 0.0);
}

// The pair (x0, x1) of features (2i, 2i + 1) rotated by RoPE at `position`.
fn rotated(x0: f32, x1: f32, position: u32, i: u32) -> vec2<f32> {
    let half = p.dim / 2u;
    // The host sizes the table to the positions used; clamped, a row past it is valid.
    let row = min(position, arrayLength(&table) / p.dim - 1u);
    let s = table[row * p.dim + i];
    let c = table[row * p.dim + half + i];
    return vec2<f32>(x0 * c - x1 * s, x1 * c + x0 * s);
}

@compute @workgroup_size(128)
fn step(@builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
    let li = lid.x;
    let g = wid.x + wid.y * nwg.x;
    // Uniform across the workgroup: every thread returns, or none does.
    if (g >= p.batch * p.heads) {
        return;
    }
    let h = g % p.heads;
    let b = g / p.heads;
    if (li == 0u) {
        count_sh = min(counts[b], p.new_tokens);
    }
    let count = workgroupUniformLoad(&count_sh);
    let half = p.dim / 2u;
    let state_base = g * (p.dim * p.dim_v + p.dim);
    let norm_base = state_base + p.dim * p.dim_v;
    for (var r = li; r < p.dim; r += WG) {
        zs[r] = state[norm_base + r];
    }
    for (var t = 0u; t < count; t++) {
        let position = starts[b] + t;
        let qk = ((b * p.new_tokens + t) * p.heads + h) * p.dim;
        let vo = ((b * p.new_tokens + t) * p.heads + h) * p.dim_v;
        for (var i = li; i < half; i += WG) {
            let q0 = phi(f32(q[qk + 2u * i]));
            let q1 = phi(f32(q[qk + 2u * i + 1u]));
            let k0 = phi(f32(k[qk + 2u * i]));
            let k1 = phi(f32(k[qk + 2u * i + 1u]));
            fq[2u * i] = q0;
            fq[2u * i + 1u] = q1;
            fk[2u * i] = k0;
            fk[2u * i + 1u] = k1;
            let a = rotated(q0, q1, position, i);
            let c = rotated(k0, k1, position, i);
            rq[2u * i] = a.x;
            rq[2u * i + 1u] = a.y;
            rk[2u * i] = c.x;
            rk[2u * i + 1u] = c.y;
        }
        workgroupBarrier();
        // The normaliser with this token's key, read before any thread adds it to z.
        var den = p.eps;
        for (var r = 0u; r < p.dim; r++) {
            den += fq[r] * (zs[r] + fk[r]);
        }
        // Each owned column of S gains the token's term; the output reads the new column.
        for (var c = li; c < p.dim_v; c += WG) {
            let vc = f32(v[vo + c]);
            var num = 0.0;
            for (var r = 0u; r < p.dim; r++) {
                let si = state_base + r * p.dim_v + c;
                let s = state[si] + rk[r] * vc;
                state[si] = s;
                num += rq[r] * s;
            }
            out[vo + c] = T(num / den);
        }
        // Every thread has read z: now it gains the token's key.
        workgroupBarrier();
        for (var r = li; r < p.dim; r += WG) {
            zs[r] += fk[r];
        }
        // z and the shared features are the next token's to use.
        workgroupBarrier();
    }
    // (Each thread stores the rows of z it loaded and updated.)
    for (var r = li; r < p.dim; r += WG) {
        state[norm_base + r] = zs[r];
    }
    // The tokens that do not count read zeros downstream, not what the buffer held.
    for (var t = count; t < p.new_tokens; t++) {
        let vo = ((b * p.new_tokens + t) * p.heads + h) * p.dim_v;
        for (var c = li; c < p.dim_v; c += WG) {
            out[vo + c] = T(0.0);
        }
    }
}
