//! Pathfinder and Path-X (Long Range Arena): is there a path between the two dots?
//!
//! Our own generator, following the one LRA's data came from: `snakes2.py` in
//! `drewlinsley/pathfinder` (Linsley et al. 2018; Kim, Linsley et al. 2020), run with the
//! settings LRA's `lra_benchmarks/data/pathfinder.py` lists for its "hard" split
//! (`curv_contour_length_14`), the split LRA reports. An image holds two *target paths* of
//! `contour_length` short dashes ("paddles") whose first paddles start `seed_distance` apart,
//! a few shorter *distractor paths*, and two dots ("markers"): one on the start of a target
//! path and one on the end of the same path (label 1) or of the other one (label 0). So
//! positives and negatives hold the same things and differ only in where the second dot is.
//!
//! **What is followed** (values: [`PathfinderConfig::pathfinder`] for 32 × 32,
//! [`PathfinderConfig::path_x`] for 128 × 128; each field's doc names LRA's argument).
//! - A path grows paddle by paddle around *pivots*: a paddle of `paddle_length` lies from
//!   `margin` to `margin + paddle_length` beyond its pivot along its direction, and the next
//!   pivot is `paddle_length + 2·margin` further on, so consecutive paddles are separated by
//!   a gap of at most `2·margin` (a dashed line).
//! - A new direction is drawn from candidates one pixel of arc apart on the circle around the
//!   pivot, weighted `cos²(min(|Δθ|·continuity, π/2))` (Δθ: the turn), so `continuity` 1.0
//!   allows turns up to 90° and 1.8 up to 50°; candidates whose end is off the image or
//!   taken get weight 0.
//! - The first target path starts at least `2·seed_distance` from every border; the second
//!   starts `seed_distance` from the first at a uniform angle; directions of first paddles
//!   are whole degrees. The two targets are grown in turn, a paddle each. If they cannot be
//!   completed, the image starts again (LRA's `while not success`).
//! - Distractors: `distractors` paths of `distractor_length` paddles, each tried up to 5
//!   times (`max_distractor_contour_retrial = 4`) and otherwise left out
//!   (`allow_incomplete`); no single-paddle clutter (`use_single_paddles = False`).
//! - A paddle keeps clear of everything drawn except the previous paddle of its own path
//!   (LRA's occupancy mask, which adds a paddle only once the next one is placed).
//! - Intensities: paths at `path_contrast` (LRA: `snake_contrast × paddle_contrast`), dots at
//!   1, the brighter one wins where they overlap, and the image is scaled so its brightest
//!   pixel is 255 (`scipy.misc.imsave` rescales a float image to its range), giving 8-bit
//!   grey levels, which LRA feeds as tokens from a vocabulary of 256.
//! - Labels: LRA draws each label at random; here they come in pairs (one positive, one
//!   negative in random order), so every split is balanced to within one example.
//!
//! **What is simplified or changed**, and why.
//! - Drawing: coordinates are real numbers, not LRA's pixel-rounded ones, and a paddle's
//!   grey level is an analytic anti-aliasing of a capsule of width `paddle_thickness`
//!   (`clamp(thickness/2 + 0.5 − d, 0, 1)`, d = distance from the pixel's centre to the
//!   segment) instead of PIL lines at twice the resolution shrunk with a Lanczos filter.
//!   The dots are discs of `marker_radius` drawn the same way.
//! - Separation is exact, so the label is a property of the pixels: every pixel of one
//!   path (its dots included) is at least `2·margin + 1` pixels (Chebyshev distance) from
//!   every pixel of another. LRA's dilated mask gives about `2·margin` between paths, and
//!   its dots, drawn last over everything, can touch a distractor; here a dot must also keep
//!   clear (all four path ends are checked whatever the label, so the check does not depend
//!   on it) and distractors are placed after the dots and avoid them.
//! - Hence the guarantee the tests check: a flood fill over non-zero pixels that steps up to
//!   `2·margin` pixels (bridging the dashes' gaps) from one dot reaches the other exactly in
//!   positive examples. A plain 8-connected fill does not, as the paths are dashed.
//! - Dead ends: a drawn direction whose paddle does not fit is struck off and another drawn
//!   until none is left (LRA redraws 3 times, `max_paddle_retrial = 2`, then gives up), and
//!   a target path at a dead end takes back its last paddle and grows again, up to 20
//!   times an image, before the image starts again (LRA starts again at once). With the
//!   strict separation, LRA's way restarted about 99 images in 100 at 32 × 32 (measured
//!   while writing this); each paddle is still drawn by LRA's rule from where it starts.
//! - Each example is drawn from its own random stream (the seed, the split and the index),
//!   so any example can be made alone, in any order or in parallel, and a split does not
//!   change when another split's size does.
//!
//! Tokens: grey level `g` is token `g + 2`, after [`PAD`] and [`CLS`] (the ids ListOps uses),
//! so [`VOCAB_SIZE`] is 258. [`Example::tokens`] is the image row by row, exactly `side²`
//! tokens (1,024 for Pathfinder, 16,384 for Path-X) and no CLS; a classifier that reads its
//! first token puts [`CLS`] in front (1,025 and 16,385 tokens), as `crate::lra::pathfinder` does.
//! LRA's models pool the mean instead and take the 1,024 / 16,384 grey levels alone.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f64::consts::PI;

/// Padding token id (as in [`crate::listops`]).
pub const PAD: u32 = 0;
/// Classification token id (as in [`crate::listops`]); not part of [`Example::tokens`].
pub const CLS: u32 = 1;
/// Grey levels of a pixel (8 bits, as LRA's PNGs).
pub const GREY_LEVELS: usize = 256;
/// Vocabulary: padding, CLS and the 256 grey levels.
pub const VOCAB_SIZE: usize = 2 + GREY_LEVELS;
/// Labels: 0 = the dots are on different paths, 1 = on the same path.
pub const CLASSES: usize = 2;

/// Attempts at a whole image (two target paths and their dots) before giving up.
const MAX_IMAGE_ATTEMPTS: usize = 1000;
/// Tries at a paddle (first paddles: their position; later ones: a drawn direction).
const PADDLE_TRIES: usize = 3;
/// Paddles the two target paths of an image may take back at dead ends, in all.
const BACKTRACKS: usize = 20;
/// Tries at a distractor path before leaving it out.
const DISTRACTOR_TRIES: usize = 5;

/// The token id of grey level `grey`.
pub fn token(grey: u8) -> u32 {
    grey as u32 + 2
}

/// Generation settings. `Default` is [`PathfinderConfig::pathfinder`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PathfinderConfig {
    /// Image side in pixels (`window_size`): 32 for Pathfinder, 128 for Path-X.
    pub side: usize,
    /// Paddles stay this many pixels inside the border (`padding`).
    pub padding: usize,
    /// Paddles of each target path (`contour_length`; 14 in LRA's hard split).
    pub contour_length: usize,
    /// Paddles of each distractor path (`distractor_length`: `contour_length / 3`).
    pub distractor_length: usize,
    /// Distractor paths (`num_distractor_snakes`).
    pub distractors: usize,
    /// Paddle length in pixels (`paddle_length`).
    pub paddle_length: f64,
    /// Smallest paddle margin (`paddle_margin_list`): each image draws a whole margin between
    /// the two bounds; gaps within a path are at most twice it.
    pub paddle_margin_min: u32,
    /// Largest paddle margin.
    pub paddle_margin_max: u32,
    /// Paddle width in pixels (`paddle_thickness`; at least 0.5 so every pixel a paddle's
    /// centre line crosses is lit).
    pub paddle_thickness: f64,
    /// Dot radius in pixels (`marker_radius`; at least 0.5).
    pub marker_radius: f64,
    /// Distance between the starts of the two target paths (`seed_distance`).
    pub seed_distance: f64,
    /// Straightness (`continuity`): turns are weighted `cos²(min(|Δθ|·continuity, π/2))`.
    pub continuity: f64,
    /// Path brightness relative to the dots (`snake_contrast × paddle_contrast`).
    pub path_contrast: f64,
    /// Training examples (LRA: 80% of 200,000).
    pub train: usize,
    /// Validation examples (LRA: 10%).
    pub valid: usize,
    /// Test examples (LRA: 10%).
    pub test: usize,
}

impl Default for PathfinderConfig {
    fn default() -> Self {
        PathfinderConfig::pathfinder()
    }
}

impl PathfinderConfig {
    /// Pathfinder, 32 × 32 (LRA's `Pathfinder32`, hard split): paddles of 2 with margin 1
    /// and width 0.5, dots of radius 1.5, starts 7 apart, continuity 1.0, 14-paddle targets,
    /// 5 distractors of 4 paddles, contrast 2 × 0.75; 160,000 / 20,000 / 20,000 examples.
    pub fn pathfinder() -> Self {
        PathfinderConfig {
            side: 32,
            padding: 1,
            contour_length: 14,
            distractor_length: 14 / 3,
            distractors: 20 / (14 / 3),
            paddle_length: 2.0,
            paddle_margin_min: 1,
            paddle_margin_max: 1,
            paddle_thickness: 0.5,
            marker_radius: 1.5,
            seed_distance: 7.0,
            continuity: 1.0,
            path_contrast: 2.0 * 0.75,
            train: 160_000,
            valid: 20_000,
            test: 20_000,
        }
    }

    /// Path-X, 128 × 128 (LRA's `Pathfinder128`, hard split): paddles of 5 with margin 2 or
    /// 3 and width 1.5, dots of radius 3, starts 20 apart, continuity 1.8, 14-paddle targets,
    /// 8 distractors of 4 paddles (Python 2's integer division of LRA's `14 / 3` and
    /// `35 / 4`), contrast 0.9; 160,000 / 20,000 / 20,000 examples (2.6 GB of pixels: make
    /// fewer, or examples one at a time with [`PathfinderConfig::example`]).
    pub fn path_x() -> Self {
        PathfinderConfig {
            side: 128,
            padding: 1,
            contour_length: 14,
            distractor_length: 14 / 3,
            distractors: 35 / (14 / 3),
            paddle_length: 5.0,
            paddle_margin_min: 2,
            paddle_margin_max: 3,
            paddle_thickness: 1.5,
            marker_radius: 3.0,
            seed_distance: 20.0,
            continuity: 1.8,
            path_contrast: 0.9,
            train: 160_000,
            valid: 20_000,
            test: 20_000,
        }
    }

    /// The same images with LRA's split of `contour_length` paddles per target path: 6
    /// (`curv_baseline`, the easy split), 9 (`curv_contour_length_9`) or 14
    /// (`curv_contour_length_14`, the hard one LRA reports). As LRA's `pathfinder.py`,
    /// distractors have a third of the paddles and their number keeps the clutter constant
    /// (`20 / distractor_length` at 32 × 32, `35 / distractor_length` at 128 × 128).
    pub fn with_contour_length(self, contour_length: usize) -> Result<Self, String> {
        if ![6, 9, 14].contains(&contour_length) {
            return Err(format!(
                "contour length {contour_length}: LRA's splits have 6, 9 or 14 paddles"
            ));
        }
        let clutter = if self.side >= 128 { 35 } else { 20 };
        let distractor_length = contour_length / 3;
        Ok(PathfinderConfig {
            contour_length,
            distractor_length,
            distractors: clutter / distractor_length,
            ..self
        })
    }

    /// Tokens per example: `side²` (CLS not included).
    pub fn seq_len(&self) -> usize {
        self.side * self.side
    }

    /// Checks the settings can make an image; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        let finite = [
            c.paddle_length,
            c.paddle_thickness,
            c.marker_radius,
            c.seed_distance,
            c.continuity,
            c.path_contrast,
        ]
        .iter()
        .all(|x| x.is_finite());
        let problem = if !finite {
            "a setting is not a finite number".to_string()
        } else if c.side < 8 || c.side > 4096 {
            format!("side {} is outside 8-4096 pixels", c.side)
        } else if c.padding < 1 || 2 * c.padding >= c.side {
            format!(
                "padding {} must be at least 1 and leave room inside the image",
                c.padding
            )
        } else if c.contour_length < 1 || c.contour_length > 10_000 {
            format!(
                "contour_length {} is outside 1-10000 paddles",
                c.contour_length
            )
        } else if c.distractor_length > 10_000 || c.distractors > 10_000 {
            "distractor_length and distractors must be at most 10000".to_string()
        } else if c.distractors > 0 && c.distractor_length < 1 {
            "distractor_length must be at least 1 paddle when there are distractors".to_string()
        } else if c.paddle_length <= 0.0 {
            format!("paddle_length {} must be positive", c.paddle_length)
        } else if c.paddle_margin_min < 1 || c.paddle_margin_min > c.paddle_margin_max {
            format!(
                "paddle margins {}-{} must be at least 1 and in order",
                c.paddle_margin_min, c.paddle_margin_max
            )
        } else if c.paddle_margin_max > 100 {
            format!("paddle margin {} is over 100 pixels", c.paddle_margin_max)
        } else if c.paddle_thickness < 0.5 {
            format!("paddle_thickness {} is under 0.5 pixel", c.paddle_thickness)
        } else if c.marker_radius < 0.5 {
            format!("marker_radius {} is under 0.5 pixel", c.marker_radius)
        } else if c.continuity < 0.0 {
            format!("continuity {} is negative", c.continuity)
        } else if c.path_contrast <= 0.0 {
            format!("path_contrast {} must be positive", c.path_contrast)
        } else if c.seed_distance <= 0.0 || 4.0 * c.seed_distance >= c.side as f64 {
            format!(
                "a {side} × {side} grid is too small for seed_distance {}: the first target \
                 path starts 2 × seed_distance from every border (need side > {})",
                c.seed_distance,
                4.0 * c.seed_distance,
                side = c.side
            )
        } else if c.paddle_length + 2.0 * c.paddle_margin_max as f64 + 2.0 * c.padding as f64
            >= c.side as f64
        {
            format!(
                "a {side} × {side} grid is too small for paddles of {} with margin {}",
                c.paddle_length,
                c.paddle_margin_max,
                side = c.side
            )
        } else {
            return Ok(());
        };
        Err(format!("Pathfinder settings: {problem}"))
    }

    /// Example `index` of `split`, from `seed`: the same as [`Pathfinder::generate`] puts
    /// there. Fails on bad settings, or when no image fits after many attempts (settings
    /// too crowded for the grid).
    pub fn example(&self, seed: u64, split: Split, index: u64) -> Result<Example, String> {
        self.validate()?;
        draw_example(self, seed, split, index)
    }
}

/// A split of the data; each has its own random stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training.
    Train,
    /// Validation.
    Valid,
    /// Test.
    Test,
}

/// One image: grey levels and the label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Grey levels 0-255, row by row, `side²` of them (0 is the background).
    pub pixels: Vec<u8>,
    /// 1 when both dots are on the same path, 0 when on different paths.
    pub label: u32,
    /// The dots' centres as pixel (column, row): for checks and pictures, not model input.
    pub markers: [(u16, u16); 2],
    /// The paddle margin this image drew: gaps within a path are at most `2 × margin`
    /// pixels, and different paths are at least `2 × margin + 1` apart (Chebyshev).
    pub paddle_margin: u32,
}

impl Example {
    /// Token ids ([`token`] of each pixel, row by row), without CLS.
    pub fn tokens(&self) -> Vec<u32> {
        self.pixels.iter().map(|&g| token(g)).collect()
    }

    /// Whether the dots are joined through lit pixels, stepping at most `2 × paddle_margin`
    /// pixels (Chebyshev) from lit pixel to lit pixel: equal to `label == 1` for every
    /// example this module makes.
    pub fn dots_joined(&self) -> bool {
        joined(
            &self.pixels,
            self.markers[0],
            self.markers[1],
            2 * self.paddle_margin as usize,
        )
    }
}

/// The three splits.
#[derive(Clone, Debug)]
pub struct Pathfinder {
    /// The settings they were made with.
    pub config: PathfinderConfig,
    /// Training examples.
    pub train: Vec<Example>,
    /// Validation examples.
    pub valid: Vec<Example>,
    /// Test examples.
    pub test: Vec<Example>,
}

impl Pathfinder {
    /// Generates the splits from `seed`, on all CPU cores (one thread in a browser; the
    /// result does not depend on their number). Fails on bad settings or settings too
    /// crowded for the grid.
    pub fn generate(config: PathfinderConfig, seed: u64) -> Result<Pathfinder, String> {
        config.validate()?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let split = |split: Split, n: usize| generate_split(&config, seed, split, n, threads);
        Ok(Pathfinder {
            train: split(Split::Train, config.train)?,
            valid: split(Split::Valid, config.valid)?,
            test: split(Split::Test, config.test)?,
            config,
        })
    }
}

fn generate_split(
    config: &PathfinderConfig,
    seed: u64,
    split: Split,
    n: usize,
    threads: usize,
) -> Result<Vec<Example>, String> {
    if threads <= 1 || n < 2 {
        // One thread (and no threads at all in a browser): drawn here.
        return (0..n)
            .map(|i| draw_example(config, seed, split, i as u64))
            .collect();
    }
    let chunk = n.div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<Example>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(|i| draw_example(config, seed, split, i as u64))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a generator thread panicked".into()))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

/// The most frequent label of `examples` and its share: the majority-class baseline.
pub fn majority(examples: &[Example]) -> (u32, f64) {
    let positives = examples.iter().filter(|e| e.label == 1).count();
    let negatives = examples.len() - positives;
    let (label, n) = if positives > negatives {
        (1, positives)
    } else {
        (0, negatives)
    };
    (label, n as f64 / examples.len().max(1) as f64)
}

/// Breadth-first search over lit (non-zero) pixels of a square image from `from` to `to`
/// (pixel column, row), stepping to any lit pixel within Chebyshev distance `step`.
pub fn joined(pixels: &[u8], from: (u16, u16), to: (u16, u16), step: usize) -> bool {
    let side = (pixels.len() as f64).sqrt() as usize;
    if side * side != pixels.len() || side == 0 {
        return false;
    }
    let at = |p: (u16, u16)| p.1 as usize * side + p.0 as usize;
    let (start, goal) = (at(from), at(to));
    if start >= pixels.len() || goal >= pixels.len() || pixels[start] == 0 || pixels[goal] == 0 {
        return false;
    }
    let mut seen = vec![false; pixels.len()];
    let mut queue = std::collections::VecDeque::from([start]);
    seen[start] = true;
    let r = step as isize;
    while let Some(p) = queue.pop_front() {
        if p == goal {
            return true;
        }
        let (x, y) = ((p % side) as isize, (p / side) as isize);
        for qy in (y - r).max(0)..=(y + r).min(side as isize - 1) {
            for qx in (x - r).max(0)..=(x + r).min(side as isize - 1) {
                let q = qy as usize * side + qx as usize;
                if pixels[q] != 0 && !seen[q] {
                    seen[q] = true;
                    queue.push_back(q);
                }
            }
        }
    }
    false
}

// ---- drawing -------------------------------------------------------------------------------

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn stream(seed: u64, split: Split, purpose: u64, index: u64) -> u64 {
    let s = match split {
        Split::Train => 1,
        Split::Valid => 2,
        Split::Test => 3,
    };
    splitmix(splitmix(splitmix(splitmix(seed) ^ s) ^ purpose) ^ index)
}

fn draw_example(
    config: &PathfinderConfig,
    seed: u64,
    split: Split,
    index: u64,
) -> Result<Example, String> {
    // One positive and one negative per pair of indices, in random order.
    let flip = stream(seed, split, 1, index / 2) & 1;
    let label = ((index & 1) ^ flip) as u32;
    let mut rng = StdRng::seed_from_u64(stream(seed, split, 2, index));
    draw(config, &mut rng, label)
}

#[derive(Clone, Copy, Debug)]
struct P {
    x: f64,
    y: f64,
}

impl P {
    fn along(self, theta: f64, d: f64) -> P {
        P {
            x: self.x + d * theta.cos(),
            y: self.y + d * theta.sin(),
        }
    }
}

/// Distance from `p` to the segment `a`-`b`.
fn segment_distance(p: P, a: P, b: P) -> f64 {
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.x - a.x) * dx + (p.y - a.y) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (p.x - a.x - t * dx).hypot(p.y - a.y - t * dy)
}

const EMPTY: u16 = u16::MAX;
/// What a pixel held: index, path, paddle, value.
type Before = (usize, u16, u16, f32);
const DOT: u16 = u16::MAX - 1;

/// Who owns each pixel (path and paddle) and how bright it is.
struct Canvas {
    side: usize,
    /// Pixels of different paths are at least this far apart (Chebyshev).
    sep: isize,
    path: Vec<u16>,
    paddle: Vec<u16>,
    value: Vec<f32>,
    /// Pixels the path being drawn has taken, to undo it.
    journal: Vec<usize>,
}

impl Canvas {
    fn new(side: usize, margin: u32) -> Canvas {
        Canvas {
            side,
            sep: 2 * margin as isize + 1,
            path: vec![EMPTY; side * side],
            paddle: vec![EMPTY; side * side],
            value: vec![0.0; side * side],
            journal: Vec::new(),
        }
    }

    /// Lit pixels of a capsule (segment `a`-`b`, `radius` = half the width) or a disc
    /// (`a == b`), with their coverage times `contrast`.
    fn shape(&self, a: P, b: P, radius: f64, contrast: f64, out: &mut Vec<(usize, f32)>) {
        out.clear();
        let reach = radius + 0.5;
        let lo_x = (a.x.min(b.x) - reach).floor().max(0.0) as usize;
        let hi_x = ((a.x.max(b.x) + reach).ceil() as usize).min(self.side - 1);
        let lo_y = (a.y.min(b.y) - reach).floor().max(0.0) as usize;
        let hi_y = ((a.y.max(b.y) + reach).ceil() as usize).min(self.side - 1);
        for y in lo_y..=hi_y {
            for x in lo_x..=hi_x {
                let c = P {
                    x: x as f64 + 0.5,
                    y: y as f64 + 0.5,
                };
                let v = (reach - segment_distance(c, a, b)).clamp(0.0, 1.0);
                if v > 0.0 {
                    out.push((y * self.side + x, (v * contrast) as f32));
                }
            }
        }
    }

    /// Whether a pixel of path `path` (paddle `paddle`, or [`DOT`]) may be at `at`: nothing of
    /// another path within `sep − 1`, nor (for a paddle) of its own path's earlier paddles
    /// but the previous one.
    fn free(&self, at: usize, path: u16, paddle: u16) -> bool {
        let (x, y) = ((at % self.side) as isize, (at / self.side) as isize);
        let r = self.sep - 1;
        let last = self.side as isize - 1;
        for qy in (y - r).max(0)..=(y + r).min(last) {
            let row = qy as usize * self.side;
            for qx in (x - r).max(0)..=(x + r).min(last) {
                let q = row + qx as usize;
                let owner = self.path[q];
                if owner == EMPTY {
                    continue;
                }
                if owner != path {
                    return false;
                }
                let k = self.paddle[q];
                if paddle != DOT && k != DOT && k + 1 < paddle {
                    return false;
                }
            }
        }
        true
    }

    fn all_free(&self, pixels: &[(usize, f32)], path: u16, paddle: u16) -> bool {
        pixels.iter().all(|&(q, _)| self.free(q, path, paddle))
    }

    fn put(&mut self, pixels: &[(usize, f32)], path: u16, paddle: u16) {
        self.put_recorded(pixels, path, paddle, &mut Vec::new());
    }

    /// [`Canvas::put`], noting in `record` what each pixel held before.
    fn put_recorded(
        &mut self,
        pixels: &[(usize, f32)],
        path: u16,
        paddle: u16,
        record: &mut Vec<Before>,
    ) {
        for &(q, v) in pixels {
            record.push((q, self.path[q], self.paddle[q], self.value[q]));
            if self.path[q] == EMPTY {
                self.path[q] = path;
                self.paddle[q] = paddle;
                self.journal.push(q);
            }
            self.value[q] = self.value[q].max(v);
        }
    }

    /// Puts back what `record` noted.
    fn restore(&mut self, record: &[Before]) {
        for &(q, path, paddle, value) in record.iter().rev() {
            self.path[q] = path;
            self.paddle[q] = paddle;
            self.value[q] = value;
        }
    }

    /// Keeps what the current path drew.
    fn keep(&mut self) {
        self.journal.clear();
    }

    /// Removes what the current path drew.
    fn undo(&mut self) {
        for q in self.journal.drain(..) {
            self.path[q] = EMPTY;
            self.paddle[q] = EMPTY;
            self.value[q] = 0.0;
        }
    }

    fn inside(&self, p: P, padding: f64) -> bool {
        let hi = self.side as f64 - padding;
        p.x >= padding && p.x <= hi && p.y >= padding && p.y <= hi
    }

    fn pixel(&self, p: P) -> usize {
        let x = (p.x.max(0.0) as usize).min(self.side - 1);
        let y = (p.y.max(0.0) as usize).min(self.side - 1);
        y * self.side + x
    }
}

/// A path being grown.
struct Path {
    id: u16,
    paddles: u16,
    /// Where the first paddle starts and the last one ends (the dots go there).
    start: P,
    end: P,
    theta: f64,
    /// The pivot the next paddle turns around.
    pivot: P,
    /// For each paddle after the first: the state before it and what it covered.
    history: Vec<(f64, P, P, Vec<Before>)>,
}

struct Drawer<'a> {
    c: &'a PathfinderConfig,
    canvas: Canvas,
    margin: f64,
    scratch: Vec<(usize, f32)>,
}

impl Drawer<'_> {
    /// The first paddle of path `id`, from `start` along `theta`, if it fits.
    fn seed(&mut self, id: u16, start: P, theta: f64) -> Option<Path> {
        let end = start.along(theta, self.c.paddle_length);
        let pad = self.c.padding as f64;
        if !self.canvas.inside(start, pad) || !self.canvas.inside(end, pad) {
            return None;
        }
        let mut px = std::mem::take(&mut self.scratch);
        let radius = self.c.paddle_thickness / 2.0;
        self.canvas
            .shape(start, end, radius, self.c.path_contrast, &mut px);
        let ok = self.canvas.all_free(&px, id, 0);
        if ok {
            self.canvas.put(&px, id, 0);
        }
        self.scratch = px;
        ok.then(|| Path {
            id,
            paddles: 1,
            start,
            end,
            theta,
            pivot: end.along(theta, self.margin),
            history: Vec::new(),
        })
    }

    /// Adds a paddle to `path`; false when no direction fits.
    fn extend(&mut self, rng: &mut StdRng, path: &mut Path) -> bool {
        let (len, m, pad) = (self.c.paddle_length, self.margin, self.c.padding as f64);
        let reach = len + m;
        let n = ((2.0 * PI * reach).ceil() as usize).max(8);
        let mut cands: Vec<(f64, f64)> = Vec::with_capacity(n);
        let mut total = 0.0;
        for j in 0..n {
            let phi = 2.0 * PI * j as f64 / n as f64 - PI;
            let mut turn = (phi - path.theta).rem_euclid(2.0 * PI);
            if turn > PI {
                turn = 2.0 * PI - turn;
            }
            let w = (turn * self.c.continuity)
                .min(PI / 2.0)
                .cos()
                .max(0.0)
                .powi(2);
            if w < 1e-12 {
                continue;
            }
            let (near, far) = (path.pivot.along(phi, m), path.pivot.along(phi, reach));
            if !self.canvas.inside(near, pad) || !self.canvas.inside(far, pad) {
                continue;
            }
            if !self
                .canvas
                .free(self.canvas.pixel(far), path.id, path.paddles)
            {
                continue;
            }
            total += w;
            cands.push((w, phi));
        }
        // Draw a direction by weight; one that does not fit is struck off and another drawn.
        let radius = self.c.paddle_thickness / 2.0;
        let mut px = std::mem::take(&mut self.scratch);
        let mut found = None;
        while total > 1e-9 && !cands.is_empty() {
            let mut r = rng.random::<f64>() * total;
            let mut i = cands.len() - 1;
            for (j, &(w, _)) in cands.iter().enumerate() {
                if r < w {
                    i = j;
                    break;
                }
                r -= w;
            }
            let (w, phi) = cands.swap_remove(i);
            total -= w;
            let (near, far) = (path.pivot.along(phi, m), path.pivot.along(phi, reach));
            self.canvas
                .shape(near, far, radius, self.c.path_contrast, &mut px);
            if self.canvas.all_free(&px, path.id, path.paddles) {
                let mut record = Vec::with_capacity(px.len());
                self.canvas
                    .put_recorded(&px, path.id, path.paddles, &mut record);
                path.history
                    .push((path.theta, path.end, path.pivot, record));
                found = Some((phi, far));
                break;
            }
        }
        self.scratch = px;
        match found {
            Some((phi, far)) => {
                path.paddles += 1;
                path.theta = phi;
                path.end = far;
                path.pivot = far.along(phi, m);
                true
            }
            None => false,
        }
    }

    /// Takes back the last paddle of `path`; false when only the first is left.
    fn retract(&mut self, path: &mut Path) -> bool {
        let Some((theta, end, pivot, record)) = path.history.pop() else {
            return false;
        };
        self.canvas.restore(&record);
        path.paddles -= 1;
        path.theta = theta;
        path.end = end;
        path.pivot = pivot;
        true
    }

    /// The two target paths, grown in turn; a path that runs into a dead end takes back
    /// paddles (at most [`BACKTRACKS`] in all) and grows again.
    fn targets(&mut self, rng: &mut StdRng) -> Option<[Path; 2]> {
        let (side, sd) = (self.c.side as f64, self.c.seed_distance);
        let mut first = None;
        for _ in 0..PADDLE_TRIES {
            let start = P {
                x: rng.random_range(2.0 * sd..side - 2.0 * sd),
                y: rng.random_range(2.0 * sd..side - 2.0 * sd),
            };
            let theta = degrees(rng.random_range(-180..180));
            if let Some(p) = self.seed(0, start, theta) {
                first = Some(p);
                break;
            }
        }
        let first = first?;
        let mut second = None;
        for _ in 0..PADDLE_TRIES {
            let theta = degrees(rng.random_range(-180..180));
            let start = first.start.along(degrees(rng.random_range(0..360)), sd);
            if let Some(p) = self.seed(1, start, theta) {
                second = Some(p);
                break;
            }
        }
        let mut paths = [first, second?];
        let mut budget = BACKTRACKS;
        let want = self.c.contour_length as u16;
        loop {
            // The shorter path grows next (the first on a tie): the two grow in turn.
            let i = usize::from(paths[1].paddles < paths[0].paddles);
            if paths[i].paddles >= want {
                break;
            }
            if !self.extend(rng, &mut paths[i]) {
                if budget == 0 || !self.retract(&mut paths[i]) {
                    return None;
                }
                budget -= 1;
            }
        }
        self.canvas.keep();
        Some(paths)
    }

    /// Draws the dots at `paths[a].start` and at the end of `paths[b]`, after checking that
    /// a dot at any of the four path ends would keep clear of the other path and its dots.
    fn dots(&mut self, paths: &[Path; 2], a: usize, b: usize) -> bool {
        let r = self.c.marker_radius;
        let disc = |canvas: &Canvas, p: P| {
            let mut px = Vec::new();
            canvas.shape(p, p, r, 1.0, &mut px);
            px
        };
        let ends: Vec<Vec<(usize, f32)>> =
            [paths[0].start, paths[0].end, paths[1].start, paths[1].end]
                .iter()
                .map(|&p| disc(&self.canvas, p))
                .collect();
        for (i, d) in ends.iter().enumerate() {
            if !self.canvas.all_free(d, paths[i / 2].id, DOT) {
                return false;
            }
        }
        let side = self.c.side as isize;
        let apart = |u: &[(usize, f32)], v: &[(usize, f32)]| {
            u.iter().all(|&(p, _)| {
                v.iter().all(|&(q, _)| {
                    let (px, py) = (p as isize % side, p as isize / side);
                    let (qx, qy) = (q as isize % side, q as isize / side);
                    (px - qx).abs().max((py - qy).abs()) >= self.canvas.sep
                })
            })
        };
        for i in 0..2 {
            for j in 2..4 {
                if !apart(&ends[i], &ends[j]) {
                    return false;
                }
            }
        }
        self.canvas.put(&ends[2 * a], paths[a].id, DOT);
        self.canvas.put(&ends[2 * b + 1], paths[b].id, DOT);
        self.canvas.keep();
        true
    }

    fn distractor(&mut self, rng: &mut StdRng, id: u16) {
        let (lo, hi) = (self.c.padding as f64, (self.c.side - self.c.padding) as f64);
        for _ in 0..DISTRACTOR_TRIES {
            let mut path = None;
            for _ in 0..PADDLE_TRIES {
                let start = P {
                    x: rng.random_range(lo..hi),
                    y: rng.random_range(lo..hi),
                };
                let theta = degrees(rng.random_range(-180..180));
                path = self.seed(id, start, theta);
                if path.is_some() {
                    break;
                }
            }
            if let Some(mut path) = path {
                if (1..self.c.distractor_length).all(|_| self.extend(rng, &mut path)) {
                    self.canvas.keep();
                    return;
                }
            }
            self.canvas.undo();
        }
    }
}

fn degrees(d: i32) -> f64 {
    d as f64 * PI / 180.0
}

fn draw(c: &PathfinderConfig, rng: &mut StdRng, label: u32) -> Result<Example, String> {
    for _ in 0..MAX_IMAGE_ATTEMPTS {
        let margin = rng.random_range(c.paddle_margin_min..=c.paddle_margin_max);
        let mut d = Drawer {
            c,
            canvas: Canvas::new(c.side, margin),
            margin: margin as f64,
            scratch: Vec::new(),
        };
        let Some(paths) = d.targets(rng) else {
            continue;
        };
        let a = rng.random_range(0..2usize);
        let b = if label == 1 { a } else { 1 - a };
        if !d.dots(&paths, a, b) {
            continue;
        }
        for i in 0..c.distractors {
            d.distractor(rng, 2 + i as u16);
        }
        let canvas = d.canvas;
        let top = canvas.value.iter().cloned().fold(0.0f32, f32::max);
        let pixels = canvas
            .value
            .iter()
            .map(|&v| {
                if v > 0.0 {
                    ((255.0 * v / top).round() as u8).max(1)
                } else {
                    0
                }
            })
            .collect();
        let at = |p: P| {
            let q = canvas.pixel(p);
            ((q % c.side) as u16, (q / c.side) as u16)
        };
        return Ok(Example {
            pixels,
            label,
            markers: [at(paths[a].start), at(paths[b].end)],
            paddle_margin: margin,
        });
    }
    Err(format!(
        "Pathfinder: no image fits after {MAX_IMAGE_ATTEMPTS} attempts: two paths of {} \
         paddles ({} long, margin up to {}) do not fit a {} × {} grid",
        c.contour_length, c.paddle_length, c.paddle_margin_max, c.side, c.side
    ))
}

/// Draws a picture of samples into a PNG at `path`: four positive and four negative
/// Pathfinder images (32 × 32, shown 4×) and a positive and a negative Path-X image
/// (128 × 128, shown 2×), all from `seed`'s test split, with the dots circled in red.
#[cfg(not(target_arch = "wasm32"))]
pub fn render_samples(path: &std::path::Path, seed: u64) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("picture {}: {e}", path.display());
    let pick = |config: &PathfinderConfig, per_label: usize| -> Result<Vec<Example>, String> {
        let mut found = [Vec::new(), Vec::new()];
        let mut i = 0;
        while found.iter().any(|f| f.len() < per_label) {
            let e = config.example(seed, Split::Test, i)?;
            i += 1;
            let l = e.label as usize;
            if found[l].len() < per_label {
                found[l].push(e);
            }
        }
        let [neg, pos] = found;
        Ok(pos.into_iter().chain(neg).collect())
    };
    let small = pick(&PathfinderConfig::pathfinder(), 4)?;
    let big = pick(&PathfinderConfig::path_x(), 1)?;

    let (scale, gap, caption) = (4i32, 10i32, 22i32);
    let cell = 32 * scale;
    let big_cell = 128 * 2;
    let width = 4 * cell + 3 * gap + 2 * gap + 2 * big_cell + gap + 2 * gap;
    let height = 2 * (cell + caption) + gap + 2 * gap;
    let text = crate::fonts::register_sans_serif();
    let root = BitMapBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let draw = |e: &Example, side: i32, s: i32, x0: i32, y0: i32, title: &str| {
        if text {
            root.draw(&Text::new(
                title.to_string(),
                (x0, y0 + 2),
                ("sans-serif", 15).into_font().color(&BLACK),
            ))
            .map_err(|e| err(&e))?;
        }
        let y0 = y0 + caption;
        for (i, &g) in e.pixels.iter().enumerate() {
            let (x, y) = (i as i32 % side, i as i32 / side);
            root.draw(&Rectangle::new(
                [
                    (x0 + x * s, y0 + y * s),
                    (x0 + (x + 1) * s, y0 + (y + 1) * s),
                ],
                RGBColor(g, g, g).filled(),
            ))
            .map_err(|e| err(&e))?;
        }
        for &(mx, my) in &e.markers {
            let c = (x0 + mx as i32 * s + s / 2, y0 + my as i32 * s + s / 2);
            root.draw(&Circle::new(c, (3 * s).max(12), RED.stroke_width(1)))
                .map_err(|e| err(&e))?;
        }
        Ok::<(), String>(())
    };
    for (i, e) in small.iter().enumerate() {
        let (col, row) = (i as i32 % 4, i as i32 / 4);
        let title = if e.label == 1 { "positive" } else { "negative" };
        draw(
            e,
            32,
            scale,
            gap + col * (cell + gap),
            gap + row * (cell + caption + gap),
            title,
        )?;
    }
    let x0 = gap + 4 * (cell + gap) + gap;
    for (i, e) in big.iter().enumerate() {
        let title = if e.label == 1 {
            "Path-X positive"
        } else {
            "Path-X negative"
        };
        draw(e, 128, 2, x0 + i as i32 * (big_cell + gap), gap, title)?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn small(train: usize, valid: usize, test: usize) -> PathfinderConfig {
        PathfinderConfig {
            train,
            valid,
            test,
            ..PathfinderConfig::pathfinder()
        }
    }

    #[test]
    fn lra_splits_keep_the_clutter_of_lra_pathfinder_py() {
        // LRA's pathfinder.py: distractor_length = contour_length / 3 (integer division),
        // num_distractor_snakes = 20 (32 x 32) or 35 (128 x 128) / distractor_length.
        let easy = PathfinderConfig::pathfinder()
            .with_contour_length(6)
            .unwrap();
        assert_eq!((easy.distractor_length, easy.distractors), (2, 10));
        let mid = PathfinderConfig::path_x().with_contour_length(9).unwrap();
        assert_eq!((mid.distractor_length, mid.distractors), (3, 11));
        let hard = PathfinderConfig::pathfinder()
            .with_contour_length(14)
            .unwrap();
        assert_eq!((hard.distractor_length, hard.distractors), (4, 5));
        assert_eq!(hard, PathfinderConfig::pathfinder());
        let path_x = PathfinderConfig::path_x();
        assert_eq!(path_x.with_contour_length(14).unwrap(), path_x);
        let err = PathfinderConfig::pathfinder()
            .with_contour_length(7)
            .unwrap_err();
        assert!(err.contains("6, 9 or 14"), "{err}");
        let easy_images = Pathfinder::generate(small(6, 2, 2).with_contour_length(6).unwrap(), 3);
        assert_eq!(easy_images.unwrap().train.len(), 6);
    }

    #[test]
    fn generation_is_deterministic_and_seeded() {
        let c = small(40, 10, 10);
        let a = Pathfinder::generate(c, 7).unwrap();
        let b = Pathfinder::generate(c, 7).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.valid, b.valid);
        assert_eq!(a.test, b.test);
        let other = Pathfinder::generate(c, 8).unwrap();
        assert!(a
            .train
            .iter()
            .zip(&other.train)
            .all(|(x, y)| x.pixels != y.pixels));
        // Any example alone equals its place in the splits, whatever the thread count.
        assert_eq!(c.example(7, Split::Valid, 3).unwrap(), a.valid[3]);
        for threads in [1, 3] {
            assert_eq!(
                generate_split(&c, 7, Split::Train, 40, threads).unwrap(),
                a.train,
                "the thread count must not change the data"
            );
        }
        // Splits are drawn apart: sizes of one do not move another.
        let bigger = Pathfinder::generate(small(60, 10, 10), 7).unwrap();
        assert_eq!(bigger.test, a.test);
        assert_eq!(&bigger.train[..40], &a.train[..]);
        let all: HashSet<&Vec<u8>> = a
            .train
            .iter()
            .chain(&a.valid)
            .chain(&a.test)
            .map(|e| &e.pixels)
            .collect();
        assert_eq!(all.len(), 60, "every image is different");
    }

    #[test]
    fn labels_are_balanced_and_lengths_exact() {
        let d = Pathfinder::generate(small(101, 20, 0), 3).unwrap();
        for (split, n) in [(&d.train, 101), (&d.valid, 20)] {
            assert_eq!(split.len(), n);
            let pos = split.iter().filter(|e| e.label == 1).count();
            assert!(pos.abs_diff(n - pos) <= 1, "{pos} positives of {n}");
            for e in split {
                assert_eq!(e.pixels.len(), 1024);
                let t = e.tokens();
                assert_eq!(t.len(), 1024);
                assert!(t.iter().all(|&id| (2..VOCAB_SIZE as u32).contains(&id)));
                assert_eq!(
                    e.pixels.iter().max(),
                    Some(&255),
                    "scaled to the brightest pixel"
                );
            }
        }
        // Labels are not simply alternating.
        let labels: Vec<u32> = d.train.iter().map(|e| e.label).collect();
        assert!(labels.windows(2).any(|w| w[0] == w[1]));
        assert!(majority(&d.valid).1 == 0.5);
        assert_eq!(majority(&[]), (0, 0.0));
    }

    /// The property the label stands for, read off the pixels alone: the dots are joined
    /// through lit pixels (gaps of the dashes bridged) exactly when the label is 1.
    #[test]
    fn label_is_connectivity_of_the_pixels() {
        let c = small(300, 0, 0);
        let d = Pathfinder::generate(c, 11).unwrap();
        let mut dashed = 0;
        for (i, e) in d.train.iter().enumerate() {
            let [a, b] = e.markers;
            assert!(a != b);
            assert_eq!(
                e.dots_joined(),
                e.label == 1,
                "example {i} (label {}) dots {a:?} {b:?}",
                e.label
            );
            // The paths are dashed: plain 8-connectivity often fails even on positives.
            if e.label == 1 && !joined(&e.pixels, a, b, 1) {
                dashed += 1;
            }
            // Distractors are drawn, and stay apart from the targets.
            let lit = e.pixels.iter().filter(|&&g| g > 0).count();
            assert!(lit > 60, "example {i}: {lit} lit pixels");
        }
        assert!(dashed > 30, "only {dashed} positives have dashes with gaps");
    }

    #[test]
    fn path_x_is_128_by_128_and_keeps_the_guarantee() {
        let c = PathfinderConfig::path_x();
        assert_eq!(c.seq_len(), 16_384);
        for i in 0..6 {
            let e = c.example(5, Split::Train, i).unwrap();
            assert_eq!(e.tokens().len(), 16_384);
            assert!((2..=3).contains(&e.paddle_margin));
            assert_eq!(e.dots_joined(), e.label == 1, "Path-X example {i}");
        }
    }

    #[test]
    fn bad_settings_are_errors() {
        let bad = [
            PathfinderConfig {
                side: 16,
                ..PathfinderConfig::pathfinder()
            },
            PathfinderConfig {
                paddle_thickness: 0.2,
                ..PathfinderConfig::pathfinder()
            },
            PathfinderConfig {
                paddle_margin_min: 3,
                paddle_margin_max: 2,
                ..PathfinderConfig::path_x()
            },
            PathfinderConfig {
                continuity: f64::NAN,
                ..PathfinderConfig::pathfinder()
            },
            PathfinderConfig {
                padding: 0,
                ..PathfinderConfig::pathfinder()
            },
        ];
        for c in bad {
            let e = Pathfinder::generate(c, 1).unwrap_err();
            assert!(e.starts_with("Pathfinder settings:"), "{e}");
        }
        let e = PathfinderConfig {
            side: 16,
            ..PathfinderConfig::pathfinder()
        }
        .validate()
        .unwrap_err();
        assert!(e.contains("too small"), "{e}");
        // Valid settings that cannot fit two paths give up with a message, not a hang.
        let crowded = PathfinderConfig {
            contour_length: 400,
            train: 1,
            valid: 0,
            test: 0,
            ..PathfinderConfig::pathfinder()
        };
        let e = Pathfinder::generate(crowded, 1).unwrap_err();
        assert!(e.contains("no image fits"), "{e}");
    }
}
