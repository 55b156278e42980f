//! Every form of every kernel family (`ops::FAMILIES`, and the examples' profiler kernel) must
//! parse and validate with naga and translate to SPIR-V (Vulkan), MSL (Metal), HLSL (DX12)
//! and GLSL ES 3.1 (GL), so a shader that would break on another platform fails here, on any
//! machine. Where Khronos' validators are installed (`spirv-val` from spirv-tools,
//! `glslangValidator` from glslang-tools; CI installs both and sets
//! `ROFORMER_REQUIRE_VALIDATORS=1`), every SPIR-V module and every GLSL ES module is also
//! given to them, so a naga emission bug surfaces here before a driver meets it.

use std::path::{Path, PathBuf};
use std::process::Command;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use roformer_wgpu::{KernelFamily, Variant};

/// The library's families and the examples' one.
fn families() -> Vec<&'static KernelFamily> {
    let mut all: Vec<&'static KernelFamily> = roformer_wgpu::ops::FAMILIES.to_vec();
    all.push(&roformer_lab::profile::FAMILY);
    all
}

/// What one form translates to, for the external validators.
struct Translated {
    spirv: Vec<u32>,
    /// One GLSL ES module per entry point (none for native-only forms: GL cannot run them).
    glsl: Vec<(String, String)>,
}

fn translate(variant: &Variant, source: &str) -> Result<Translated, String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
    // No optional capabilities: the shaders must run on any WebGPU adapter. The exceptions
    // (subgroups, f16, cooperative matrices) are compiled only where the device has them.
    let native = variant.needs_native();
    let capabilities = if native {
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
    // wgpu's Vulkan backend asks for SPIR-V 1.3 where subgroups are enabled, else 1.0.
    let spv_options = spv::Options {
        lang_version: if native { (1, 3) } else { (1, 0) },
        ..Default::default()
    };
    let spirv =
        spv::write_vec(module, info, &spv_options, None).map_err(|e| format!("SPIR-V: {e}"))?;
    // wgpu asks naga for MSL 2.3 or newer where cooperative matrices are available.
    let msl_options = msl::Options {
        lang_version: if native { (2, 3) } else { (1, 0) },
        ..Default::default()
    };
    msl::write_string(module, info, &msl_options, &msl::PipelineOptions::default())
        .map_err(|e| format!("MSL: {e}"))?;
    let mut glsl_modules = Vec::new();
    if native {
        // Neither DX12 nor GL has these features in wgpu.
        return Ok(Translated {
            spirv,
            glsl: glsl_modules,
        });
    }
    let mut hlsl_out = String::new();
    hlsl::Writer::new(
        &mut hlsl_out,
        &hlsl::Options::default(),
        &hlsl::PipelineOptions::default(),
    )
    .write(module, info, None)
    .map_err(|e| format!("HLSL: {e}"))?;
    if module.entry_points.is_empty() {
        return Err("no entry point".into());
    }
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
        glsl_modules.push((ep.name.clone(), glsl_out));
    }
    Ok(Translated {
        spirv,
        glsl: glsl_modules,
    })
}

/// Every form of every family, translated: `(family name, form index, variant, result)`.
fn translate_all() -> Vec<(&'static str, usize, Variant, Result<Translated, String>)> {
    let mut all = Vec::new();
    for family in families() {
        let forms = family
            .compiled_forms()
            .unwrap_or_else(|e| panic!("{}: {e}", family.shader.name));
        for (i, (variant, source)) in forms.into_iter().enumerate() {
            let result = translate(&variant, &source);
            all.push((family.shader.name, i, variant, result));
        }
    }
    all
}

#[test]
fn every_shader_translates_to_spirv_msl_hlsl_and_glsl() {
    let all = translate_all();
    let failures: Vec<String> = all
        .iter()
        .filter_map(|(name, i, _, r)| r.as_ref().err().map(|e| format!("{name} (form {i}): {e}")))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} shader forms failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn every_wgsl_file_is_known_to_the_library() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let families = families();
    let forms: Vec<(&str, Vec<String>)> = families
        .iter()
        .map(|f| {
            let sources = f.compiled_forms().unwrap().into_iter().map(|(_, s)| s);
            (f.shader.name, sources.collect())
        })
        .collect();
    for dir in [root.join("shaders"), root.join("lab/shaders")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "wgsl") {
                continue;
            }
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            let Some(family) = families.iter().find(|f| f.shader.name == stem) else {
                panic!("{} is the shader of no family listed", path.display());
            };
            // The file, then any snippets from shaders/lib appended to it.
            let on_disk = std::fs::read_to_string(&path).unwrap();
            assert!(
                family.shader.source.starts_with(&on_disk),
                "{stem}: compiled-in source differs from the file"
            );
        }
    }
    for entry in std::fs::read_dir(root.join("shaders/lib")).unwrap() {
        let path = entry.unwrap().path();
        let snippet = std::fs::read_to_string(&path).unwrap();
        // Appended to a shader, or put into a compiled form (rows_subgroup.wgsl).
        assert!(
            families.iter().any(|f| f.shader.source.ends_with(&snippet))
                || forms
                    .iter()
                    .any(|(_, sources)| sources.iter().any(|s| s.contains(snippet.trim_end()))),
            "{} is appended to no shader and used by no form",
            path.display()
        );
    }
}

/// `program` if it runs (`--version`), else `None`; with `ROFORMER_REQUIRE_VALIDATORS=1` a
/// missing one fails the test instead.
fn validator(program: &str) -> Option<String> {
    let version = Command::new(program).arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            Some(text.lines().next().unwrap_or("").to_string())
        }
        _ => {
            assert!(
                std::env::var("ROFORMER_REQUIRE_VALIDATORS").as_deref() != Ok("1"),
                "{program} is required (ROFORMER_REQUIRE_VALIDATORS=1) but does not run"
            );
            eprintln!("SKIPPED: {program} is not installed (Debian: spirv-tools, glslang-tools)");
            None
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roformer-validate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `spirv-val --target-env vulkan1.1` on one module: `Err(its message)` when it refuses it.
fn spirv_val(dir: &Path, file: &str, words: &[u32]) -> Result<(), String> {
    let path = dir.join(file);
    std::fs::write(&path, bytemuck_words(words)).unwrap();
    let out = Command::new("spirv-val")
        .args(["--target-env", "vulkan1.1"])
        .arg(&path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn bytemuck_words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[test]
fn every_spirv_module_passes_spirv_val() {
    let Some(version) = validator("spirv-val") else {
        return;
    };
    let dir = scratch("spirv");
    // The check can fail: a module cut short is refused.
    let any = translate(
        &Variant::default(),
        roformer_wgpu::ops::adamw::SHADER.source,
    )
    .unwrap();
    let cut = &any.spirv[..any.spirv.len() / 2];
    assert!(
        spirv_val(&dir, "cut.spv", cut).is_err(),
        "spirv-val accepted a truncated module"
    );
    let mut failures = Vec::new();
    let mut unknown_to_this_version = Vec::new();
    let mut checked = 0;
    for (name, i, _, result) in translate_all() {
        let spirv = result
            .unwrap_or_else(|e| panic!("{name} (form {i}): {e}"))
            .spirv;
        match spirv_val(&dir, &format!("{name}-{i}.spv"), &spirv) {
            Ok(()) => checked += 1,
            // Cooperative matrices (SPV_KHR_cooperative_matrix, mid-2023) are newer than
            // some installed validators (Debian 12's is v2023.1): say so, loudly.
            Err(e) if name == "matmul_coop" && e.contains("Invalid capability operand: 6022") => {
                unknown_to_this_version.push(format!("{name} (form {i}): {}", e.trim()))
            }
            Err(e) => failures.push(format!("{name} (form {i}): {e}")),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("spirv-val ({version}): {checked} modules valid");
    if !unknown_to_this_version.is_empty() {
        eprintln!(
            "NOT VALIDATED: {} cooperative-matrix modules: this spirv-val predates \
             SPV_KHR_cooperative_matrix (the first: {})",
            unknown_to_this_version.len(),
            unknown_to_this_version[0]
        );
    }
    assert!(
        failures.is_empty(),
        "{} modules failed spirv-val:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_glsl_es_module_passes_glslang() {
    let Some(version) = validator("glslangValidator") else {
        return;
    };
    let dir = scratch("glsl");
    // One run over every file (a process per module would take minutes); `.comp` says
    // compute, and each module's own `#version 310 es` says the language.
    let mut files = Vec::new();
    for (name, i, _, result) in translate_all() {
        let glsl = result
            .unwrap_or_else(|e| panic!("{name} (form {i}): {e}"))
            .glsl;
        for (entry, text) in glsl {
            let path = dir.join(format!("{name}-{i}-{entry}.comp"));
            std::fs::write(&path, text).unwrap();
            files.push(path);
        }
    }
    // The check can fail: a module with a type error is refused.
    let broken = dir.join("broken.comp");
    std::fs::write(
        &broken,
        "#version 310 es\nlayout(local_size_x = 1) in;\nvoid main() { float x = vec2(1.0); }\n",
    )
    .unwrap();
    let run = |paths: &[PathBuf]| {
        let out = Command::new("glslangValidator")
            .args(paths)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (broken_ok, _) = run(std::slice::from_ref(&broken));
    assert!(!broken_ok, "glslangValidator accepted a type error");
    let mut failures = Vec::new();
    for chunk in files.chunks(200) {
        let (ok, log) = run(chunk);
        if !ok {
            failures.push(log);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "glslangValidator ({version}): {} modules checked",
        files.len()
    );
    assert!(
        failures.is_empty(),
        "glslangValidator:\n{}",
        failures.join("\n")
    );
}
