//! Any text given to the config loader: an error or a configuration that passes its own
//! validation and survives a round trip, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roformer_wgpu::model::RoFormerConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = RoFormerConfig::from_json(text, "fuzz.json") {
            assert!(c.validate().is_ok());
            let again = RoFormerConfig::from_json(&c.to_json(), "again").expect("a valid config round-trips");
            assert_eq!(again.hidden_size, c.hidden_size);
        }
    }
});
