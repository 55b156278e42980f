// The `four_rows` variant of local_attention.wgsl's ROWS block: an invocation owns four
// consecutive rows, each per-row value a vec4 (a lane per row), so each neighbour's loads
// serve four rows. (Pasted in place of the block: this file is not a shader on its own.)
const ROWS: u32 = 4u;
// A value per row, an index per row, a flag per row.
alias Rows = vec4<f32>;
alias RowIds = vec4<u32>;
alias RowFlags = vec4<bool>;
// Features 4 c4 .. 4 c4 + 3 of every row: chunk[f] is feature f's Rows.
alias Chunk = mat4x4<f32>;

// Rows first, first + 1, ..., the ones past `last` repeating it.
fn row_ids(first: u32, last: u32) -> vec4<u32> {
    return min(vec4<u32>(first) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last));
}

// Row r's index.
fn row_id(ids: vec4<u32>, r: u32) -> u32 {
    return ids[r];
}

// Row r's value.
fn row_value(x: vec4<f32>, r: u32) -> f32 {
    return x[r];
}

// Rows from the rows' values (a, b, c, d for rows 0 .. 3).
fn rows_of(a: f32, b: f32, c: f32, d: f32) -> vec4<f32> {
    return vec4<f32>(a, b, c, d);
}

// The chunk from each row's four features (a, b, c, d for rows 0 .. 3).
fn chunk_by_row(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> mat4x4<f32> {
    return transpose(mat4x4<f32>(a, b, c, d));
}

// The chunk from its four features' Rows.
fn chunk_by_feature(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(a, b, c, d);
}

// Row r's four features.
fn row_features(x: mat4x4<f32>, r: u32) -> vec4<f32> {
    return transpose(x)[r];
}
