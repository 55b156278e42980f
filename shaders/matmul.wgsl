// Batched matrix product on strided views:
//     C = alpha * A B + beta * C + bias        (bias broadcast over rows)
// Every operand is addressed as
//     base + z_outer * s_outer + z_inner * s_inner + row * rs + col * cs
// so transposed operands (swap rs and cs), broadcast operands (stride 0) and per-head
// views of a [B, T, H, d] tensor are all plain parameter changes, never copies.
//
// Tiling (the override constants below, chosen per adapter by src/ops/matmul/tiling.rs):
// a workgroup computes a BM x BN block of C, each of its (BM/TM)(BN/TN) threads a TM x TN
// register block, stepping through K in slices of BK staged in workgroup memory.
// - Staging reads 4 elements along each operand's contiguous axis (k or m for A, k or n
//   for B), so neighbouring threads read neighbouring memory whether or not an operand is
//   transposed: the backward pass's A^T B and A B^T products load as well as the forward.
//   Where the layout allows (contiguous axis stride 1, everything else a multiple of 4), the
//   four come in one vec4 load through the a4/b4 bindings, which alias a and b.
// - Tiles are stored k-major, [BK][BM] and [BK][BN], so the inner loop reads a thread's
//   rows and columns as vec4s. A thread's rows (and columns) are interleaved in groups of
//   4, so neighbouring threads read neighbouring vec4s (no bank conflicts).
// - Edges: bounds are checked only while staging a slice that crosses an edge (a uniform
//   branch per slice); interior tiles and the inner product never check anything.
// - Prefetch (PREFETCH set): each thread loads its share of the next K-slice into
//   registers before the inner product of the current one, and stores it to workgroup
//   memory after, so global-memory latency overlaps arithmetic. One more tiling for the
//   tuner to time: it costs registers, and whether it pays depends on the GPU.
// - Direct (DIRECT set): no staging at all; each thread reads its rows of A and columns of
//   B straight from memory, four k at a time, as 4 x 4 blocks (mat4x4s) added with fma into
//   named accumulators (straight-line code, no private array indexed in a loop), and no
//   barrier is needed. On a CPU adapter (llvmpipe) every load of a storage or workgroup
//   buffer is a loop over the SIMD lanes, an array indexed in a loop is memory, and a
//   barrier is a thread switch, while the CPU's caches do the staging: there the direct
//   kernel with the largest block (8 x 8: 16 loads per 256 multiply-adds) is the fastest.
//   On a GPU the staged ones should be. The tuner times both kinds;
//   src/ops/matmul/tiling.rs's heuristic says which a CPU adapter gets untimed.
// - Epilogue: with GELU set, each finished element is also written as gelu(element) to
//   `act` (same view as C), so a Linear + GELU pair is one pass (gelu_f32 comes from
//   shaders/lib/gelu.wgsl, appended to this file).
// - Element types: A, B and the bias are In, C and the GELU output Out, each f32 or f16 (a
//   variant each). Loads convert to f32; tiles, accumulators and the epilogue are f32, so
//   an f16 product rounds once, when C is stored.

alias In = f32;
alias Out = f32;

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
@group(0) @binding(5) var<storage, read> a4: array<vec4<In>>;
@group(0) @binding(6) var<storage, read> b4: array<vec4<In>>;
@group(0) @binding(7) var<storage, read_write> act: array<Out>;

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 16u;
override TM: u32 = 4u;  // multiple of 4
override TN: u32 = 4u;  // 4 or 8
// A's adjacent elements run along k (row-major A) rather than m (A stored transposed).
override A_K_CONTIG: bool = true;
// B's adjacent elements run along n (row-major B) rather than k (B stored transposed).
override B_N_CONTIG: bool = true;
override A_VEC4: bool = false;
override B_VEC4: bool = false;
override GELU: bool = false;
override PREFETCH: bool = false;
override DIRECT: bool = false;
override WG: u32 = (BM / TM) * (BN / TN);
// vec4 loads per thread per slice (at most 4; src/ops/matmul/tiling.rs checks every tiling).
override A_LOADS: u32 = BM * BK / 4u / WG;
override B_LOADS: u32 = BN * BK / 4u / WG;

var<workgroup> tile_a: array<vec4<f32>, BK * BM / 4u>;  // [BK][BM / 4]
var<workgroup> tile_b: array<vec4<f32>, BK * BN / 4u>;  // [BK][BN / 4]

// Four elements of A starting at (gm, gk), along the contiguous axis; zero outside A.
fn load_a(a_base: u32, gm: u32, gk: u32, checked: bool) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (A_VEC4) {
        // Whole vec4s are in or out: the contiguous extent is a multiple of 4.
        if (!checked || (gm < p.m && gk < p.k)) {
            v = vec4<f32>(a4[(a_base + gm * p.a_rs + gk * p.a_cs) / 4u]);
        }
        return v;
    }
    for (var i = 0u; i < 4u; i++) {
        var r = gm;
        var kk = gk;
        if (A_K_CONTIG) { kk += i; } else { r += i; }
        if (!checked || (r < p.m && kk < p.k)) {
            v[i] = f32(a[a_base + r * p.a_rs + kk * p.a_cs]);
        }
    }
    return v;
}

// Four elements of B starting at (gk, gn), along the contiguous axis; zero outside B.
fn load_b(b_base: u32, gk: u32, gn: u32, checked: bool) -> vec4<f32> {
    var v = vec4<f32>(0.0);
    if (B_VEC4) {
        if (!checked || (gk < p.k && gn < p.n)) {
            v = vec4<f32>(b4[(b_base + gk * p.b_rs + gn * p.b_cs) / 4u]);
        }
        return v;
    }
    for (var i = 0u; i < 4u; i++) {
        var kk = gk;
        var col = gn;
        if (B_N_CONTIG) { col += i; } else { kk += i; }
        if (!checked || (kk < p.k && col < p.n)) {
            v[i] = f32(b[b_base + kk * p.b_rs + col * p.b_cs]);
        }
    }
    return v;
}

// Thread li's share of a K-slice of A: A_LOADS vec4s along A's contiguous axis.
fn fetch_a(a_base: u32, row0: u32, k0: u32, li: u32, checked: bool) -> array<vec4<f32>, 4> {
    var v: array<vec4<f32>, 4>;
    for (var r = 0u; r < A_LOADS; r++) {
        let e = li + r * WG;
        if (A_K_CONTIG) {
            // Thread e reads k0 + 4 kq .. +3 of row mr.
            v[r] = load_a(a_base, row0 + e / (BK / 4u), k0 + (e % (BK / 4u)) * 4u, checked);
        } else {
            // Thread e reads rows 4 mq .. +3 at k0 + kr.
            v[r] = load_a(a_base, row0 + (e % (BM / 4u)) * 4u, k0 + e / (BM / 4u), checked);
        }
    }
    return v;
}

// ... into the k-major tile: a k-contiguous vec4 is scattered down the k axis, an
// m-contiguous one is already a row of the tile.
fn store_a(v: array<vec4<f32>, 4>, li: u32) {
    for (var r = 0u; r < A_LOADS; r++) {
        let e = li + r * WG;
        if (A_K_CONTIG) {
            let kq = e % (BK / 4u);
            let mr = e / (BK / 4u);
            let t = kq * BM + mr / 4u;  // (4 kq) * (BM / 4) + mr / 4
            let comp = mr % 4u;
            tile_a[t][comp] = v[r].x;
            tile_a[t + BM / 4u][comp] = v[r].y;
            tile_a[t + BM / 2u][comp] = v[r].z;
            tile_a[t + 3u * BM / 4u][comp] = v[r].w;
        } else {
            tile_a[e] = v[r];  // kr * (BM / 4) + mq
        }
    }
}

fn fetch_b(b_base: u32, col0: u32, k0: u32, li: u32, checked: bool) -> array<vec4<f32>, 4> {
    var v: array<vec4<f32>, 4>;
    for (var r = 0u; r < B_LOADS; r++) {
        let e = li + r * WG;
        if (B_N_CONTIG) {
            v[r] = load_b(b_base, k0 + e / (BN / 4u), col0 + (e % (BN / 4u)) * 4u, checked);
        } else {
            v[r] = load_b(b_base, k0 + (e % (BK / 4u)) * 4u, col0 + e / (BK / 4u), checked);
        }
    }
    return v;
}

fn store_b(v: array<vec4<f32>, 4>, li: u32) {
    for (var r = 0u; r < B_LOADS; r++) {
        let e = li + r * WG;
        if (B_N_CONTIG) {
            tile_b[e] = v[r];  // kr * (BN / 4) + nq
        } else {
            let kq = e % (BK / 4u);
            let nc = e / (BK / 4u);
            let t = kq * BN + nc / 4u;
            let comp = nc % 4u;
            tile_b[t][comp] = v[r].x;
            tile_b[t + BN / 4u][comp] = v[r].y;
            tile_b[t + BN / 2u][comp] = v[r].z;
            tile_b[t + 3u * BN / 4u][comp] = v[r].w;
        }
    }
}

// The DIRECT product: a thread's TM x TN block (TM and TN 4 or 8) through all of K, four k
// at a time, its rows and columns as the staged kernel assigns them (so the epilogue is
// shared).
fn direct_product(a_base: u32, b_base: u32, row0: u32, col0: u32, tx: u32, ty: u32,
                  interior: bool) -> array<vec4<f32>, 16> {
    // Four 4 x 4 blocks of C, transposed (a column of ct is a row of C): rows 4 i .. 4 i + 3
    // of the thread's, columns group j. Named, not an array, so they stay in registers.
    var ct00 = mat4x4<f32>(); var ct01 = mat4x4<f32>();
    var ct10 = mat4x4<f32>(); var ct11 = mat4x4<f32>();
    let k_full = select(0u, p.k / 4u * 4u, interior);
    let gm0 = row0 + ty * 4u;
    let gm1 = row0 + (BM / TM + ty) * 4u;
    let gn0 = col0 + tx * 4u;
    let gn1 = col0 + (BN / TN + tx) * 4u;
    for (var k0 = 0u; k0 < p.k; k0 += 4u) {
        let checked = k0 >= k_full;
        let at0 = a_block_t(a_base, gm0, k0, checked);
        let bt0 = b_block_t(b_base, k0, gn0, checked);
        ct00 = fma_block(ct00, at0, bt0);
        if (TN == 8u) {
            let bt1 = b_block_t(b_base, k0, gn1, checked);
            ct01 = fma_block(ct01, at0, bt1);
            if (TM == 8u) {
                let at1 = a_block_t(a_base, gm1, k0, checked);
                ct10 = fma_block(ct10, at1, bt0);
                ct11 = fma_block(ct11, at1, bt1);
            }
        } else if (TM == 8u) {
            ct10 = fma_block(ct10, a_block_t(a_base, gm1, k0, checked), bt0);
        }
    }
    var acc: array<vec4<f32>, 16>;
    for (var r = 0u; r < 4u; r++) {
        acc[r * (TN / 4u)] = ct00[r];
        if (TN == 8u) { acc[r * 2u + 1u] = ct01[r]; }
        if (TM == 8u) {
            acc[(4u + r) * (TN / 4u)] = ct10[r];
            if (TN == 8u) { acc[(4u + r) * 2u + 1u] = ct11[r]; }
        }
    }
    return acc;
}

// A 4 x 4 block of C (transposed: column r is row r of C) plus A's block (column r: row r,
// along k) times B's (column kk: row kk, along n), one k after another with fma, in the
// order the staged tilings add them: every tiling gives the same bits. Constant indices
// only, so it all stays in registers.
fn fma_block(ct: mat4x4<f32>, at: mat4x4<f32>, bt: mat4x4<f32>) -> mat4x4<f32> {
    var c = ct;
    c[0] = fma(vec4<f32>(at[0].x), bt[0], c[0]);
    c[0] = fma(vec4<f32>(at[0].y), bt[1], c[0]);
    c[0] = fma(vec4<f32>(at[0].z), bt[2], c[0]);
    c[0] = fma(vec4<f32>(at[0].w), bt[3], c[0]);
    c[1] = fma(vec4<f32>(at[1].x), bt[0], c[1]);
    c[1] = fma(vec4<f32>(at[1].y), bt[1], c[1]);
    c[1] = fma(vec4<f32>(at[1].z), bt[2], c[1]);
    c[1] = fma(vec4<f32>(at[1].w), bt[3], c[1]);
    c[2] = fma(vec4<f32>(at[2].x), bt[0], c[2]);
    c[2] = fma(vec4<f32>(at[2].y), bt[1], c[2]);
    c[2] = fma(vec4<f32>(at[2].z), bt[2], c[2]);
    c[2] = fma(vec4<f32>(at[2].w), bt[3], c[2]);
    c[3] = fma(vec4<f32>(at[3].x), bt[0], c[3]);
    c[3] = fma(vec4<f32>(at[3].y), bt[1], c[3]);
    c[3] = fma(vec4<f32>(at[3].z), bt[2], c[3]);
    c[3] = fma(vec4<f32>(at[3].w), bt[3], c[3]);
    return c;
}

// A's rows gm .. gm + 3 by k .. k + 3, transposed (column i: row gm + i).
fn a_block_t(a_base: u32, gm: u32, k: u32, checked: bool) -> mat4x4<f32> {
    if (A_K_CONTIG) {
        return mat4x4<f32>(load_a(a_base, gm, k, checked), load_a(a_base, gm + 1u, k, checked),
                           load_a(a_base, gm + 2u, k, checked), load_a(a_base, gm + 3u, k, checked));
    }
    return transpose(mat4x4<f32>(load_a(a_base, gm, k, checked), load_a(a_base, gm, k + 1u, checked),
                                 load_a(a_base, gm, k + 2u, checked), load_a(a_base, gm, k + 3u, checked)));
}

// B's rows k .. k + 3 by columns gn .. gn + 3, transposed (column i: row k + i).
fn b_block_t(b_base: u32, k: u32, gn: u32, checked: bool) -> mat4x4<f32> {
    if (B_N_CONTIG) {
        return mat4x4<f32>(load_b(b_base, k, gn, checked), load_b(b_base, k + 1u, gn, checked),
                           load_b(b_base, k + 2u, gn, checked), load_b(b_base, k + 3u, gn, checked));
    }
    return transpose(mat4x4<f32>(load_b(b_base, k, gn, checked), load_b(b_base, k, gn + 1u, checked),
                                 load_b(b_base, k, gn + 2u, checked), load_b(b_base, k, gn + 3u, checked)));
}

@compute @workgroup_size(WG, 1, 1)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let zo = wid.z / p.batch_inner;
    let zi = wid.z % p.batch_inner;
    let a_base = p.a_off + zo * p.a_so + zi * p.a_si;
    let b_base = p.b_off + zo * p.b_so + zi * p.b_si;
    let c_base = p.c_off + zo * p.c_so + zi * p.c_si;
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    let tx = li % (BN / TN);
    let ty = li / (BN / TN);

    // TM rows x TN/4 vec4 columns, at most 8 x 2. Loop bounds are constants once the
    // overrides are set, so drivers unroll them and keep the block in registers.
    var acc: array<vec4<f32>, 16>;
    // Slices below k_full lie wholly inside A and B for an interior tile.
    let interior = row0 + BM <= p.m && col0 + BN <= p.n;
    let k_full = select(0u, p.k / BK * BK, interior);
    var next_a: array<vec4<f32>, 4>;
    var next_b: array<vec4<f32>, 4>;
    if (DIRECT) {
        acc = direct_product(a_base, b_base, row0, col0, tx, ty, interior);
    }
    if (PREFETCH && !DIRECT) {
        next_a = fetch_a(a_base, row0, 0u, li, 0u >= k_full);
        next_b = fetch_b(b_base, col0, 0u, li, 0u >= k_full);
    }
    for (var k0 = 0u; k0 < select(p.k, 0u, DIRECT); k0 += BK) {
        if (PREFETCH) {
            store_a(next_a, li);
            store_b(next_b, li);
            let k1 = k0 + BK;
            if (k1 < p.k) {
                next_a = fetch_a(a_base, row0, k1, li, k1 >= k_full);
                next_b = fetch_b(b_base, col0, k1, li, k1 >= k_full);
            }
        } else {
            let checked = k0 >= k_full;
            store_a(fetch_a(a_base, row0, k0, li, checked), li);
            store_b(fetch_b(b_base, col0, k0, li, checked), li);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var bv: array<vec4<f32>, 2>;
            for (var j = 0u; j < TN / 4u; j++) {
                bv[j] = tile_b[kk * (BN / 4u) + j * (BN / TN) + tx];
            }
            for (var i4 = 0u; i4 < TM / 4u; i4++) {
                let av = tile_a[kk * (BM / 4u) + i4 * (BM / TM) + ty];
                for (var j = 0u; j < TN / 4u; j++) {
                    let q = i4 * TN + j;  // accumulator of row 4 i4, column group j
                    acc[q] = fma(vec4<f32>(av.x), bv[j], acc[q]);
                    acc[q + TN / 4u] = fma(vec4<f32>(av.y), bv[j], acc[q + TN / 4u]);
                    acc[q + TN / 2u] = fma(vec4<f32>(av.z), bv[j], acc[q + TN / 2u]);
                    acc[q + 3u * TN / 4u] = fma(vec4<f32>(av.w), bv[j], acc[q + 3u * TN / 4u]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let gm = row0 + ((i / 4u) * (BM / TM) + ty) * 4u + i % 4u;
        if (gm >= p.m) {
            continue;
        }
        for (var j = 0u; j < TN / 4u; j++) {
            let gn0 = col0 + (j * (BN / TN) + tx) * 4u;
            let v = acc[i * (TN / 4u) + j];
            for (var e = 0u; e < 4u; e++) {
                let gn = gn0 + e;
                if (gn < p.n) {
                    let idx = c_base + gm * p.c_rs + gn * p.c_cs;
                    var out = p.alpha * v[e];
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
        }
    }
}
