//! Kernel families as values. A [`KernelFamily`] is one WGSL shader, every form the library
//! compiles it in (its [`Variant`]s) and the host's mirrors of its parameter blocks. Each op
//! module exports one, and [`crate::ops::FAMILIES`] lists them once: the same value serves
//! the dispatches (a builder made with [`crate::DispatchBuilder::family`] refuses a text
//! variant outside the family's list), the test that translates every form for every backend
//! and the test that holds each parameter block to its WGSL layout.
//!
//! A variant changes its shader only where the WGSL marks it:
//!
//! - `const MAX_D: u32 = 64u; // variant`: a constant the host may set ([`Variant::size`]),
//!   for what an `override` cannot do (sizing a per-thread or workgroup array);
//! - `// variant NAME begin` … `// variant NAME end`: lines the host may replace with other
//!   WGSL ([`Variant::block`]);
//! - `alias T = f32;` (or `In`, `Out`): an element type the host may make f16
//!   ([`Variant::f16`]; `enable f16;` is added);
//! - `override` constants ([`Variant::constant`]), which wgpu sets without touching the text.

use crate::error::{Error, Result};
use crate::shader::{struct_layout, Shader, StructLayout};

/// One compiled form of a shader: the values of its marked places (see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Variant {
    /// `(name, value)` of the `const NAME: u32 = N; // variant` lines it sets.
    pub sizes: Vec<(&'static str, u32)>,
    /// `(name, WGSL)`: each `// variant NAME begin` … `end` block and what replaces it.
    pub blocks: Vec<(&'static str, &'static str)>,
    /// The element-type aliases (`T`, `In`, `Out`) compiled as f16.
    pub f16: Vec<&'static str>,
    /// `override` constants, by name.
    pub constants: Vec<(&'static str, f64)>,
    /// Uses an optional feature (subgroups, cooperative matrices): compiled only on devices
    /// that have it, and only for backends that can express it. An f16 alias implies it.
    pub native_only: bool,
}

impl Variant {
    /// Sets the marked constant `name` to `value`.
    pub fn size(mut self, name: &'static str, value: u32) -> Self {
        self.sizes.push((name, value));
        self
    }

    /// Replaces the marked block `name` with `wgsl`.
    pub fn block(mut self, name: &'static str, wgsl: &'static str) -> Self {
        self.blocks.push((name, wgsl));
        self
    }

    /// Compiles element-type alias `alias` as f16.
    pub fn f16(mut self, alias: &'static str) -> Self {
        if !self.f16.contains(&alias) {
            self.f16.push(alias);
        }
        self
    }

    /// Sets the `override` constant `name` (booleans as 0 or 1).
    pub fn constant(mut self, name: &'static str, value: f64) -> Self {
        self.constants.push((name, value));
        self
    }

    /// Marks the variant as using an optional feature (see [`Variant::native_only`]).
    pub fn native(mut self) -> Self {
        self.native_only = true;
        self
    }

    /// Whether it needs an optional device feature (subgroups, cooperative matrices, f16).
    pub fn needs_native(&self) -> bool {
        self.native_only || !self.f16.is_empty()
    }

    /// What the text of the compiled source depends on (not the `override` constants),
    /// in a canonical order: sizes and blocks by name, aliases sorted.
    pub(crate) fn text_key(&self) -> TextKey {
        let mut sizes = self.sizes.clone();
        sizes.sort();
        let mut blocks = self.blocks.clone();
        blocks.sort();
        let mut f16 = self.f16.clone();
        f16.sort();
        (sizes, blocks, f16)
    }

    /// `shader`'s source with this variant's marked places filled in. A mark that is
    /// missing, or there twice, means the WGSL drifted from the code choosing its variants:
    /// an [`Error::Kernel`].
    pub fn source(&self, shader: &Shader) -> Result<String> {
        if self.sizes.is_empty() && self.blocks.is_empty() && self.f16.is_empty() {
            return Ok(shader.source.to_string());
        }
        let drifted = |message: String| Error::Kernel {
            kernel: shader.name.to_string(),
            message,
        };
        let mut lines: Vec<String> = shader.source.lines().map(str::to_string).collect();
        for &(name, value) in &self.sizes {
            let prefix = format!("const {name}: u32 = ");
            let at = only_one(&lines, |l| {
                l.trim_start().starts_with(&prefix) && l.contains("// variant")
            })
            .map_err(|found| {
                drifted(format!(
                    "expects one line `const {name}: u32 = …; // variant`, found {found}"
                ))
            })?;
            let indent = &lines[at][..lines[at].len() - lines[at].trim_start().len()];
            lines[at] = format!("{indent}{prefix}{value}u; // variant");
        }
        for &(name, wgsl) in &self.blocks {
            let (begin, end) = (
                format!("// variant {name} begin"),
                format!("// variant {name} end"),
            );
            let first = only_one(&lines, |l| l.trim() == begin);
            let last = only_one(&lines, |l| l.trim() == end);
            let (Ok(first), Ok(last)) = (first, last) else {
                return Err(drifted(format!(
                    "expects the lines `{begin}` and `{end}` once each"
                )));
            };
            if last < first {
                return Err(drifted(format!("`{end}` comes before `{begin}`")));
            }
            lines.splice(first + 1..last, wgsl.lines().map(str::to_string));
        }
        for &alias in &self.f16 {
            let declaration = format!("alias {alias} = f32;");
            let at = only_one(&lines, |l| l.trim() == declaration).map_err(|found| {
                drifted(format!(
                    "f16 for {alias} expects one line `{declaration}`, found {found}"
                ))
            })?;
            lines[at] = format!("alias {alias} = f16;");
        }
        let mut source = lines.join("\n");
        source.push('\n');
        // f16 needs WGSL's extension, enabled before any declaration (once: a shader that
        // always uses f16 enables it itself).
        if !self.f16.is_empty() && !source.contains("enable f16;") {
            source.insert_str(0, "enable f16;\n");
        }
        Ok(source)
    }
}

/// The index of the one line that matches, or how many did.
fn only_one(lines: &[String], matches: impl Fn(&str) -> bool) -> Result<usize, usize> {
    let found: Vec<usize> = (0..lines.len()).filter(|&i| matches(&lines[i])).collect();
    match found[..] {
        [one] => Ok(one),
        _ => Err(found.len()),
    }
}

/// What a variant's source text depends on: sizes, blocks and f16 aliases, canonically
/// ordered.
pub(crate) type TextKey = (
    Vec<(&'static str, u32)>,
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
);

/// The host's `#[repr(C)]` mirror of one WGSL parameter struct (made with
/// [`crate::host_layout!`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamBlock {
    /// The struct's name in the WGSL.
    pub wgsl_struct: &'static str,
    /// The Rust struct's size and field offsets.
    pub host: StructLayout,
}

/// One kernel family: its shader, the forms it is compiled in, its parameter blocks.
#[derive(Debug)]
pub struct KernelFamily {
    /// The WGSL.
    pub shader: &'static Shader,
    /// Every variant the library may compile, with f32 element types; each may also be
    /// compiled with any of the element-type aliases its WGSL declares as f16.
    pub variants: fn() -> Vec<Variant>,
    /// The host's mirrors of its parameter structs.
    pub params: fn() -> Vec<ParamBlock>,
}

/// The variant list of a family compiled one way only.
pub fn one_form() -> Vec<Variant> {
    vec![Variant::default()]
}

impl KernelFamily {
    /// The element-type aliases its WGSL declares (`alias T = f32;` gives `T`), outside
    /// its variant blocks (an alias inside one is that block's own type, which another form
    /// of the block declares otherwise).
    pub fn element_aliases(&self) -> Vec<&'static str> {
        let mut in_block = false;
        self.shader
            .source
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                if l.starts_with("// variant ") {
                    in_block = l.ends_with(" begin");
                }
                if in_block {
                    return None;
                }
                l.strip_prefix("alias ")?.strip_suffix(" = f32;")
            })
            .collect()
    }

    /// Refuses a variant whose text is not one of the family's: sizes and blocks must be
    /// those of one of its [`KernelFamily::variants`], and every f16 alias one the WGSL
    /// declares. (`override` constants are not checked here: wgpu checks their names, and
    /// a matmul tiling is the caller's to choose.)
    pub fn check_variant(&self, v: &Variant) -> Result<()> {
        let kernel_error = |message: String| Error::Kernel {
            kernel: self.shader.name.to_string(),
            message,
        };
        let aliases = self.element_aliases();
        if let Some(a) = v.f16.iter().find(|a| !aliases.contains(a)) {
            return Err(kernel_error(format!(
                "element type {a:?} is not one of the aliases its WGSL declares ({aliases:?})"
            )));
        }
        let (sizes, blocks, _) = v.text_key();
        let listed = (self.variants)().iter().any(|known| {
            let (s, b, _) = known.text_key();
            s == sizes && b == blocks
        });
        if !listed {
            return Err(kernel_error(format!(
                "the variant with sizes {sizes:?} and blocks {:?} is not one the family \
                 lists (so no test has translated it)",
                blocks.iter().map(|b| b.0).collect::<Vec<_>>()
            )));
        }
        Ok(())
    }

    /// Every form to check, with its source: each variant, then, for each distinct text
    /// among them, each f16 alias alone and all of them together (at that text's first
    /// constants).
    pub fn compiled_forms(&self) -> Result<Vec<(Variant, String)>> {
        let variants = (self.variants)();
        let aliases = self.element_aliases();
        let mut choices: Vec<Vec<&'static str>> = aliases.iter().map(|&a| vec![a]).collect();
        if aliases.len() > 1 {
            choices.push(aliases.clone());
        }
        let mut forms = Vec::new();
        let mut texts_seen = Vec::new();
        for v in &variants {
            forms.push((v.clone(), v.source(self.shader)?));
            let text = v.text_key();
            if texts_seen.contains(&text) {
                continue;
            }
            texts_seen.push(text);
            for chosen in &choices {
                let mut half = v.clone();
                for &a in chosen {
                    half = half.f16(a);
                }
                let source = half.source(self.shader)?;
                forms.push((half, source));
            }
        }
        Ok(forms)
    }

    /// Holds each of the host's parameter structs to the WGSL's layout (size, and every
    /// field at the same offset, as naga lays it out), and requires one for a shader with a
    /// uniform block. The error lists every mismatch.
    pub fn check_params(&self) -> Result<()> {
        let blocks = (self.params)();
        let mut problems = Vec::new();
        if blocks.is_empty() && self.shader.source.contains("var<uniform>") {
            problems.push("it has a uniform block but no host layout".to_string());
        }
        for block in &blocks {
            let wgsl = struct_layout(self.shader, block.wgsl_struct)?;
            if wgsl != block.host {
                problems.push(format!(
                    "{}:\n  WGSL {wgsl:?}\n  host {:?}",
                    block.wgsl_struct, block.host
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Kernel {
                kernel: self.shader.name.to_string(),
                message: problems.join("\n"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static MARKED: Shader = Shader {
        name: "marked",
        source: "alias T = f32;
const N: u32 = 4u; // variant
// variant pick begin
fn pick(x: f32) -> f32 { return x; }
// variant pick end
@group(0) @binding(0) var<storage, read_write> y: array<T>;
var<workgroup> tile: array<f32, N>;
@compute @workgroup_size(1)
fn main() { tile[0] = 1.0; y[0] = T(pick(tile[0])); }
",
    };

    static FAMILY: KernelFamily = KernelFamily {
        shader: &MARKED,
        variants: || {
            vec![
                Variant::default(),
                Variant::default()
                    .size("N", 8)
                    .block("pick", "fn pick(x: f32) -> f32 { return -x; }"),
            ]
        },
        params: Vec::new,
    };

    #[test]
    fn marked_places_change_and_nothing_else() {
        let v = Variant::default()
            .size("N", 8)
            .block("pick", "fn pick(x: f32) -> f32 { return -x; }")
            .f16("T");
        let s = v.source(&MARKED).unwrap();
        assert!(s.starts_with("enable f16;\nalias T = f16;\n"), "{s}");
        assert!(s.contains("const N: u32 = 8u; // variant"), "{s}");
        assert!(s.contains("return -x;") && !s.contains("return x;"), "{s}");
        // The markers stay, so the text is still a variant of the same shader.
        assert!(s.contains("// variant pick begin\nfn pick"), "{s}");
        if let Err(e) = crate::shader::parse("marked", &s) {
            panic!("the variant does not parse: {e}");
        }
        // The default form is the file itself.
        assert_eq!(Variant::default().source(&MARKED).unwrap(), MARKED.source);
    }

    #[test]
    fn a_mark_that_drifted_is_an_error_not_a_silent_default() {
        let missing = Variant::default().size("M", 2).source(&MARKED).unwrap_err();
        assert!(missing.to_string().contains("const M: u32"), "{missing}");
        let block = Variant::default()
            .block("other", "")
            .source(&MARKED)
            .unwrap_err();
        assert!(block.to_string().contains("variant other begin"), "{block}");
        let alias = Variant::default().f16("Out").source(&MARKED).unwrap_err();
        assert!(alias.to_string().contains("alias Out = f32;"), "{alias}");
    }

    #[test]
    fn a_family_refuses_text_it_does_not_list() {
        assert_eq!(FAMILY.element_aliases(), ["T"]);
        FAMILY.check_variant(&Variant::default().f16("T")).unwrap();
        let listed = Variant::default()
            .block("pick", "fn pick(x: f32) -> f32 { return -x; }")
            .size("N", 8)
            .constant("ANY", 3.0);
        FAMILY.check_variant(&listed).unwrap();
        let unlisted = FAMILY
            .check_variant(&Variant::default().size("N", 16))
            .unwrap_err();
        assert!(unlisted.to_string().contains("not one the family lists"));
        let alias = FAMILY
            .check_variant(&Variant::default().f16("In"))
            .unwrap_err();
        assert!(alias.to_string().contains("\"In\""), "{alias}");
        // Each listed form, and f16 of each distinct text.
        assert_eq!(FAMILY.compiled_forms().unwrap().len(), 4);
    }
}
