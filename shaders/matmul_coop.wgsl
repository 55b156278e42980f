// Batched matrix product on cooperative matrices (tensor cores):
//     C = alpha * A B + beta * C + bias
// on the same strided views and parameters as matmul.wgsl. Only compiled where the device
// has wgpu's cooperative-matrix feature with 16x16x16 f16 -> f32 fragments, shader-f16 and
// one fixed subgroup size (src/ops/matmul/coop.rs says which adapters that is).
// A, B and the bias are In, C and the GELU output Out (f32 or f16 each, a variant each).
// f32 elements of A and B are rounded to f16 (11 significant bits) while staging, f16 ones
// staged as they are; products are summed in f32. Values beyond f16's range (65504) become
// infinite.
//
// Tiling: a workgroup of 4 subgroups computes a BM x BN = 8S x 8S block of C, each subgroup
// (2 x 2 grid) a 4S x 4S block held in FM x FN = 4 x 4 accumulator fragments. K is staged
// through workgroup memory in slices of BK = 2S, converted to the input type on the way.
// The workgroup is sized for exactly 4 subgroups, so this kernel is only used where the
// adapter's subgroup size is fixed (coop ops must run in workgroup-uniform control flow,
// so no subgroup may sit out). The epilogue passes each fragment through workgroup memory
// so alpha, beta, bias, the edges and the optional GELU output (as in matmul.wgsl, with
// shaders/lib/gelu.wgsl appended) are handled per element.

enable f16;
enable wgpu_cooperative_matrix;

alias In = f32;
alias Out = f32;

alias Elem = f16;
alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias FragC = coop_mat16x16<f32, C>;
const S: u32 = 16u;

struct Params {
    m: u32, n: u32, k: u32, batch_inner: u32,
    a_off: u32, a_rs: u32, a_cs: u32, a_so: u32,
    a_si: u32, b_off: u32, b_rs: u32, b_cs: u32,
    b_so: u32, b_si: u32, c_off: u32, c_rs: u32,
    c_cs: u32, c_so: u32, c_si: u32, bias_off: u32,
    alpha: f32, beta: f32, has_bias: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<In>;
@group(0) @binding(2) var<storage, read> b: array<In>;
@group(0) @binding(3) var<storage, read> bias: array<In>;
@group(0) @binding(4) var<storage, read_write> c: array<Out>;
// GELU(C), when the GELU override is set.
@group(0) @binding(5) var<storage, read_write> act: array<Out>;

// Threads per subgroup (the adapter's one subgroup size).
override SG: u32 = 32u;
override A_K_CONTIG: bool = true;
override B_N_CONTIG: bool = true;
override GELU: bool = false;

const FM: u32 = 4u;
const FN: u32 = 4u;
const BM: u32 = 8u * S;
const BN: u32 = 8u * S;
const BK: u32 = 2u * S;

var<workgroup> tile_a: array<Elem, BM * BK>;  // row-major [BM][BK]
var<workgroup> tile_b: array<Elem, BK * BN>;  // row-major [BK][BN]
var<workgroup> tile_c: array<f32, 4u * S * S>;  // one fragment per subgroup

@compute @workgroup_size(4u * SG, 1, 1)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(local_invocation_index) li: u32,
          @builtin(subgroup_id) sg: u32,
          @builtin(subgroup_size) sg_size: u32,
          @builtin(subgroup_invocation_id) lane: u32) {
    let zo = wid.z / p.batch_inner;
    let zi = wid.z % p.batch_inner;
    let a_base = p.a_off + zo * p.a_so + zi * p.a_si;
    let b_base = p.b_off + zo * p.b_so + zi * p.b_si;
    let c_base = p.c_off + zo * p.c_so + zi * p.c_si;
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let threads = 4u * SG;
    // This subgroup's block of C, within the workgroup's.
    let wm = (sg / 2u) * (FM * S);
    let wn = (sg % 2u) * (FN * S);

    var acc: array<FragC, 16>;  // FM x FN
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Neighbouring threads take neighbouring elements along each operand's
        // contiguous axis; out-of-range elements are staged as 0.
        for (var e = li; e < BM * BK; e += threads) {
            var r = e / BK;
            var kk = e % BK;
            if (!A_K_CONTIG) {
                r = e % BM;
                kk = e / BM;
            }
            var v = 0.0;
            if (row0 + r < p.m && k0 + kk < p.k) {
                v = f32(a[a_base + (row0 + r) * p.a_rs + (k0 + kk) * p.a_cs]);
            }
            tile_a[r * BK + kk] = Elem(v);
        }
        for (var e = li; e < BK * BN; e += threads) {
            var kk = e / BN;
            var col = e % BN;
            if (!B_N_CONTIG) {
                kk = e % BK;
                col = e / BK;
            }
            var v = 0.0;
            if (k0 + kk < p.k && col0 + col < p.n) {
                v = f32(b[b_base + (k0 + kk) * p.b_rs + (col0 + col) * p.b_cs]);
            }
            tile_b[kk * BN + col] = Elem(v);
        }
        workgroupBarrier();
        for (var ks = 0u; ks < BK; ks += S) {
            var fa: array<FragA, 4>;  // FM
            for (var i = 0u; i < FM; i++) {
                fa[i] = coopLoadT<FragA>(&tile_a[(wm + i * S) * BK + ks], BK);
            }
            for (var j = 0u; j < FN; j++) {
                let fb = coopLoadT<FragB>(&tile_b[ks * BN + wn + j * S], BN);
                for (var i = 0u; i < FM; i++) {
                    acc[i * FN + j] = coopMultiplyAdd(fa[i], fb, acc[i * FN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    // Epilogue, one fragment at a time: the subgroup stores it to its slot of tile_c, then
    // its lanes finish and write the elements inside C.
    for (var f = 0u; f < FM * FN; f++) {
        coopStoreT(acc[f], &tile_c[sg * S * S], S);
        workgroupBarrier();
        let fr = row0 + wm + (f / FN) * S;
        let fc = col0 + wn + (f % FN) * S;
        for (var e = lane; e < S * S; e += sg_size) {
            let gm = fr + e / S;
            let gn = fc + e % S;
            if (gm < p.m && gn < p.n) {
                let idx = c_base + gm * p.c_rs + gn * p.c_cs;
                var out = p.alpha * tile_c[sg * S * S + e];
                // beta == 0 must not read C: it may hold anything, NaN included.
                if (p.beta != 0.0) {
                    out += p.beta * f32(c[idx]);
                }
                if (p.has_bias != 0u) {
                    out += f32(bias[p.bias_off + gn]);
                }
                c[idx] = Out(out);
                if (GELU) {
                    act[idx] = Out(gelu_f32(out));
                }
            }
        }
        workgroupBarrier();
    }
}
