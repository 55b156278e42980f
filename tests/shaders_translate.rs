//! Every shader (and every variant the library compiles) must parse and validate with naga
//! and translate to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES 3.1 (GL), so a
//! shader that would break on another platform fails here, on any machine.

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use roformer_wgpu::ops::ShaderVariant;

fn translate(name: &str, variant: &ShaderVariant) -> Result<(), String> {
    let source = &variant.source;
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    // No optional capabilities: the shaders must run on any WebGPU adapter. The exceptions
    // (cooperative-matrix kernels) are compiled only where the device has what they use.
    let capabilities = if variant.native_only {
        Capabilities::COOPERATIVE_MATRIX | Capabilities::SHADER_FLOAT16 | Capabilities::SUBGROUP
    } else {
        Capabilities::empty()
    };
    let info = Validator::new(ValidationFlags::all(), capabilities)
        .validate(&module)
        .map_err(|e| e.emit_to_string(source))?;
    // Override constants are set as wgpu sets them before handing the module to a backend.
    let constants: naga::back::PipelineConstants = variant
        .constants
        .iter()
        .map(|&(name, value)| (name.to_string(), value))
        .collect();
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
            .map_err(|e| format!("overrides {:?}: {e}", variant.constants))?;
    let (module, info) = (&*module, &*info);
    spv::write_vec(module, info, &spv::Options::default(), None)
        .map_err(|e| format!("SPIR-V: {e}"))?;
    // wgpu asks naga for MSL 2.3 or newer where cooperative matrices are available.
    let msl_options = msl::Options {
        lang_version: if variant.native_only { (2, 3) } else { (1, 0) },
        ..Default::default()
    };
    msl::write_string(module, info, &msl_options, &msl::PipelineOptions::default())
        .map_err(|e| format!("MSL: {e}"))?;
    if variant.native_only {
        // Neither DX12 nor GL has cooperative matrices in wgpu.
        return Ok(());
    }
    let mut hlsl_out = String::new();
    hlsl::Writer::new(
        &mut hlsl_out,
        &hlsl::Options::default(),
        &hlsl::PipelineOptions::default(),
    )
    .write(module, info, None)
    .map_err(|e| format!("HLSL: {e}"))?;
    assert!(!module.entry_points.is_empty(), "{name} has no entry point");
    for ep in &module.entry_points {
        let mut glsl_out = String::new();
        let pipeline = glsl::PipelineOptions {
            shader_stage: ep.stage,
            entry_point: ep.name.clone(),
            multiview: None,
        };
        glsl::Writer::new(
            &mut glsl_out,
            module,
            info,
            &glsl::Options::default(),
            &pipeline,
            Default::default(),
        )
        .and_then(|mut w| w.write())
        .map_err(|e| format!("GLSL ({}): {e}", ep.name))?;
    }
    Ok(())
}

#[test]
fn every_shader_translates_to_spirv_msl_hlsl_and_glsl() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (shader, sources) in roformer_wgpu::ops::all_shader_sources().unwrap() {
        for (i, variant) in sources.iter().enumerate() {
            count += 1;
            if let Err(e) = translate(shader.name, variant) {
                failures.push(format!("{} (variant {i}): {e}", shader.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} shader variants failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_wgsl_file_is_known_to_the_library() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let known: Vec<&str> = roformer_wgpu::ops::all_shader_sources()
        .unwrap()
        .iter()
        .map(|(s, _)| s.name)
        .collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                known.contains(&stem.as_str()),
                "{} is not listed in ops::all_shader_sources",
                path.display()
            );
            let on_disk = std::fs::read_to_string(&path).unwrap();
            let (shader, _) = roformer_wgpu::ops::all_shader_sources()
                .unwrap()
                .into_iter()
                .find(|(s, _)| s.name == stem)
                .unwrap();
            // The file, then any snippets from shaders/lib appended to it.
            assert!(
                shader.source.starts_with(&on_disk),
                "{stem}: compiled-in source differs from the file"
            );
        }
    }
    for entry in std::fs::read_dir(dir.join("lib")).unwrap() {
        let path = entry.unwrap().path();
        let snippet = std::fs::read_to_string(&path).unwrap();
        // Appended to a shader, or put into a compiled variant (rows_subgroup.wgsl).
        assert!(
            roformer_wgpu::ops::all_shader_sources()
                .unwrap()
                .iter()
                .any(|(s, variants)| s.source.ends_with(&snippet)
                    || variants.iter().any(|v| v.source.contains(&snippet))),
            "{} is appended to no shader and used by no variant",
            path.display()
        );
    }
}
