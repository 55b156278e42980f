// Batched matrix product on strided views:
//     C = alpha * A B + beta * C + bias        (bias broadcast over rows)
// Every operand is addressed as
//     base + z_outer * s_outer + z_inner * s_inner + row * rs + col * cs
// so transposed operands (swap rs and cs), broadcast operands (stride 0) and per-head
// views of a [B, T, H, d] tensor are all plain parameter changes, never copies.
//
// Tiling: a 16x16 workgroup computes a 64x64 block of C, each thread a 4x4 register block
// (rows ty + 16 i, columns tx + 16 j), stepping through K in slices of 16 staged in
// workgroup memory. Edges are handled when staging (out-of-range elements load as 0) and
// when storing, so any M, N, K works.

struct Params {
    m: u32, n: u32, k: u32, batch_inner: u32,
    a_off: u32, a_rs: u32, a_cs: u32, a_so: u32,
    a_si: u32, b_off: u32, b_rs: u32, b_cs: u32,
    b_so: u32, b_si: u32, c_off: u32, c_rs: u32,
    c_cs: u32, c_so: u32, c_si: u32, bias_off: u32,
    alpha: f32, beta: f32, has_bias: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

// k-major tiles: at a given k a thread reads its 4 rows (or columns) with stride 16.
var<workgroup> tile_a: array<f32, 1024>; // [BK][BM]
var<workgroup> tile_b: array<f32, 1024>; // [BK][BN]

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let zo = wid.z / p.batch_inner;
    let zi = wid.z % p.batch_inner;
    let a_base = p.a_off + zo * p.a_so + zi * p.a_si;
    let b_base = p.b_off + zo * p.b_so + zi * p.b_si;
    let c_base = p.c_off + zo * p.c_so + zi * p.c_si;
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;

    // The 4x4 register block as four vec4 rows, updated with explicit vector FMAs: naga
    // does not unroll loops, and an array indexed by loop counters can end up in memory.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var r = 0u; r < 4u; r++) {
            let e = li + r * 256u;
            // A: neighbouring threads take neighbouring k (contiguous when A is row-major).
            let ka = e % BK;
            let ma = e / BK;
            var va = 0.0;
            if (row0 + ma < p.m && k0 + ka < p.k) {
                va = a[a_base + (row0 + ma) * p.a_rs + (k0 + ka) * p.a_cs];
            }
            tile_a[ka * BM + ma] = va;
            // B: neighbouring threads take neighbouring n (contiguous when B is row-major).
            let nb = e % BN;
            let kb = e / BN;
            var vb = 0.0;
            if (col0 + nb < p.n && k0 + kb < p.k) {
                vb = b[b_base + (k0 + kb) * p.b_rs + (col0 + nb) * p.b_cs];
            }
            tile_b[kb * BN + nb] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let ta = kk * BM + lid.y;
            let tb = kk * BN + lid.x;
            let bv = vec4<f32>(tile_b[tb], tile_b[tb + 16u], tile_b[tb + 32u], tile_b[tb + 48u]);
            acc0 = fma(vec4<f32>(tile_a[ta]), bv, acc0);
            acc1 = fma(vec4<f32>(tile_a[ta + 16u]), bv, acc1);
            acc2 = fma(vec4<f32>(tile_a[ta + 32u]), bv, acc2);
            acc3 = fma(vec4<f32>(tile_a[ta + 48u]), bv, acc3);
        }
        workgroupBarrier();
    }

    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i++) {
        let gm = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let gn = col0 + lid.x + 16u * j;
            if (gm < p.m && gn < p.n) {
                let idx = c_base + gm * p.c_rs + gn * p.c_cs;
                var v = p.alpha * rows[i][j];
                // beta == 0 must not read C: it may hold anything, NaN included.
                if (p.beta != 0.0) {
                    v += p.beta * c[idx];
                }
                if (p.has_bias != 0u) {
                    v += bias[p.bias_off + gn];
                }
                c[idx] = v;
            }
        }
    }
}
