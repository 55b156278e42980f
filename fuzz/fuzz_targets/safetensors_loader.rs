//! Any bytes given to the checkpoint loader: an error or tensors, never a panic, a hang or
//! an allocation beyond the input's size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = roformer_wgpu::io::parse_safetensors(std::path::Path::new("fuzz.safetensors"), data) {
        // Whatever loaded must be self-consistent.
        for t in tensors.values() {
            let n = match &t.data {
                roformer_wgpu::io::HostData::F32(v) => v.len(),
                roformer_wgpu::io::HostData::I64(v) => v.len(),
            };
            assert_eq!(n, t.numel());
        }
    }
});
