// ---- shaders/lib/rows_subgroup.wgsl: the row_reduce block for a workgroup that is one
// subgroup of WG lanes (WG the adapter's fixed subgroup size, a power of two): a butterfly of
// shuffles, each lane combining its part with the lane log2(WG) xor-distances away, then
// lane 0's result broadcast, so every lane holds the same bits (the combine of moments is not
// symmetric in its rounding). No workgroup memory, no barrier.
fn row_reduce(kind: u32, v: vec4<f32>, li: u32) -> vec4<f32> {
    var r = v;
    for (var offset = WG / 2u; offset > 0u; offset >>= 1u) {
        r = row_combine(kind, r, subgroupShuffleXor(r, offset));
    }
    return subgroupBroadcastFirst(r);
}
