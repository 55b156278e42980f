
// ---- shaders/lib/columns.wgsl: the column sums of a [rows, cols] matrix by 64 x 4
// workgroups (reduce's sum_rows, layernorm's parameter gradients): thread (x, y) of a
// workgroup owns column x of its 64 and sums rows y, y + 4, y + 8, ...; column_reduce then
// combines the four row-threads' parts of each column, two sums at a time.

var<workgroup> col_red: array<vec2<f32>, 256>;

// The totals of column lid.x, as (part of row-thread 0 + part of 1) + (part of 2 + part of 3),
// valid in the threads with lid.y == 0.
fn column_reduce(part: vec2<f32>, lid: vec3<u32>) -> vec2<f32> {
    col_red[lid.y * 64u + lid.x] = part;
    workgroupBarrier();
    return (col_red[lid.x] + col_red[64u + lid.x]) + (col_red[128u + lid.x] + col_red[192u + lid.x]);
}
