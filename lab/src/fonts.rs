//! Plot text for the examples that draw plots.

/// Registers a system sans-serif font for plot text (`ROFORMER_FONT` names one explicitly);
/// false when none is found, and the plot is then drawn without labels.
pub fn register_sans_serif() -> bool {
    let candidates = [
        std::env::var("ROFORMER_FONT").unwrap_or_default(),
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
        "/usr/share/fonts/TTF/DejaVuSans.ttf".into(),
        "/usr/share/fonts/dejavu/DejaVuSans.ttf".into(),
        "/System/Library/Fonts/Supplemental/Arial.ttf".into(),
        "C:\\Windows\\Fonts\\arial.ttf".into(),
    ];
    candidates
        .iter()
        .filter(|p| !p.is_empty())
        .any(|p| match std::fs::read(p) {
            Ok(bytes) => plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .is_ok(),
            Err(_) => false,
        })
}
