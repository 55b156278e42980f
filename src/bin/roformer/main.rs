//! `roformer`: transformers' pipelines on a RoFormer model folder, from the command line.
//!
//!     roformer fill-mask --model DIR [--top-k K] TEXT...
//!     roformer classify --model DIR TEXT...
//!     roformer token-classify --model DIR TEXT...
//!     roformer embed --model DIR [--pooling mean|cls] [--normalize] TEXT...
//!     roformer answer --model DIR --question Q [--context C]
//!     roformer generate --model DIR --max-new-tokens N PROMPT...
//!     roformer tokenize --model DIR TEXT...
//!
//! Texts come from the arguments, or from stdin one per line; an empty (or all-whitespace)
//! text is an error either way, so that input N is always argument N or stdin line N. Every
//! input is checked before any GPU work, so a bad one fails the run before anything is
//! printed, named by its number in the run (and stdin line) and the start of its text.
//! `--json` writes one JSON line per input holding what transformers' pipeline returns for
//! it, with its field names; otherwise a readable table, one line per input with control
//! characters escaped (`\n`, `\u{1b}`). Errors go to stderr with a non-zero exit status; a
//! reader that goes away (`| head -1`) ends the run quietly with status 0.

use std::borrow::Cow;
use std::io::{self, BufRead, BufWriter, IsTerminal, StdoutLock, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use roformer_wgpu::pipelines::answer::AnswerOptions;
use roformer_wgpu::pipelines::embed::Pooling;
use roformer_wgpu::pipelines::generate::{Decoding, GenerateOptions};
use roformer_wgpu::pipelines::{
    answer, classify, embed, fill_mask, generate, token_classify, TextModel, TextOptions,
};
use roformer_wgpu::text::{quote, Tokenizer};
use roformer_wgpu::Context;
use serde::Serialize;

mod args;
mod train;

#[derive(Parser)]
#[command(
    name = "roformer",
    version,
    about = "RoFormer pipelines (fill-mask, classification, QA, embeddings, generation) on any GPU through WebGPU",
    after_help = "Texts come from the arguments, else from stdin, one per line; an empty or \
                  all-whitespace text is an error in both. The GPU adapter is chosen by \
                  WGPU_BACKEND, WGPU_ADAPTER_NAME and WGPU_POWER_PREF."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The most likely tokens for the mask token of each text.
    FillMask {
        #[command(flatten)]
        common: Common,
        /// Guesses per mask (at least 1; more than the vocabulary gives all of it).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        top_k: u64,
    },
    /// Each text's label (a sequence-classification model).
    Classify {
        #[command(flatten)]
        common: Common,
        /// Every label's score, best first, instead of the best one.
        #[arg(long)]
        all: bool,
    },
    /// Entities in each text (a token-classification model, `simple` aggregation).
    TokenClassify {
        #[command(flatten)]
        common: Common,
    },
    /// One vector per text (hidden states pooled).
    Embed {
        #[command(flatten)]
        common: Common,
        /// How token states become one vector.
        #[arg(long, value_enum, default_value_t = PoolingArg::Mean)]
        pooling: PoolingArg,
        /// Scale each vector to unit length.
        #[arg(long)]
        normalize: bool,
    },
    /// The span of a context that answers a question (a question-answering model).
    Answer {
        #[command(flatten)]
        model: ModelArgs,
        /// The question.
        #[arg(long)]
        question: String,
        /// The context; without it, each line of stdin is a context (not empty, as texts).
        #[arg(long)]
        context: Option<String>,
        /// Answers per question (at least 1; fewer when the context has fewer).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        top_k: u64,
        /// Longest answer, in tokens (at least 1).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
        max_answer_len: u64,
    },
    /// Continue each prompt (a causal-LM model).
    Generate {
        #[command(flatten)]
        common: Common,
        /// New tokens at most (below the model's maximum length: the prompt needs room).
        /// Default: generation_config.json's max_new_tokens, else its max_length counting
        /// the prompt, else 20.
        #[arg(long)]
        max_new_tokens: Option<usize>,
        /// transformers' repetition_penalty: tokens already in the sequence have their
        /// logits divided by it (multiplied when negative); above 0 (default:
        /// generation_config.json's, else 1, none).
        #[arg(long, value_parser = positive_number)]
        repetition_penalty: Option<f32>,
        /// transformers' no_repeat_ngram_size: never repeat an n-gram of this size (default:
        /// generation_config.json's, else 0, no rule).
        #[arg(long)]
        no_repeat_ngram_size: Option<usize>,
        /// Sample instead of taking the most likely token.
        #[arg(long)]
        sample: bool,
        /// Sampling temperature.
        #[arg(long, default_value_t = 1.0, requires = "sample")]
        temperature: f32,
        /// Sample from the K most likely tokens only (0, or more than the vocabulary: all).
        #[arg(long, default_value_t = 50, requires = "sample")]
        top_k: usize,
        /// Sample from the smallest set of tokens whose probability reaches P.
        #[arg(long, default_value_t = 1.0, requires = "sample")]
        top_p: f32,
        /// The sampler's seed.
        #[arg(long, default_value_t = 0, requires = "sample")]
        seed: u64,
    },
    /// Train a model on your files (transformers' Trainer and its arguments): text or pair
    /// classification, token classification, fill-mask pre-training, causal LM.
    Train(Box<train::TrainArgs>),
    /// Token ids, tokens and character offsets of each text (the model folder's tokenizer).
    Tokenize {
        /// The model (or tokenizer) folder.
        #[arg(long)]
        model: PathBuf,
        /// One JSON line per text instead of a table.
        #[arg(long)]
        json: bool,
        /// Texts; without any, each line of stdin is one (empty ones are errors).
        texts: Vec<String>,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// The model folder (config.json, model.safetensors, tokenizer.json or vocab.txt).
    #[arg(long)]
    model: PathBuf,
    /// One JSON line per input, as transformers' pipeline returns it.
    #[arg(long)]
    json: bool,
    /// Cut texts longer than the model takes (with a warning) instead of refusing them;
    /// `generate` cuts a prompt's start, to leave room for the new tokens.
    #[arg(long)]
    truncate: bool,
    /// Texts per GPU request, 1 to 256.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    max_batch: u64,
    /// Weights and activations in f32, or in f16 (half the memory; needs an adapter with
    /// shader-f16, which `examples/info` reports).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    F16,
}

#[derive(Args)]
struct Common {
    #[command(flatten)]
    model: ModelArgs,
    /// Texts; without any, each line of stdin is one (empty ones are errors).
    texts: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PoolingArg {
    /// The mean of the token states.
    Mean,
    /// The first token's state.
    Cls,
}

type Failure = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli: Cli = args::parse_args();
    let result = run(cli);
    // Only writes to stdout fail with an io::Error here: reading stdin's errors are
    // messages, the library's are its own type.
    match result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<io::Error>())
    {
        // The reader has gone (`| head -1`): nothing more is wanted, as for any Unix tool.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Some(e) => args::exit_code(Err(format!("writing the output: {e}").into())),
        None => args::exit_code(result),
    }
}

/// A run's texts in order, and whether they came from stdin, to name one in a message.
struct Inputs {
    texts: Vec<String>,
    from_stdin: bool,
}

impl Inputs {
    /// The arguments, else stdin's lines. An empty or all-whitespace text is an error either
    /// way (skipping a blank line would make output line N no longer input N), as is a line
    /// that is not UTF-8, or no text at all.
    fn read(given: Vec<String>) -> Result<Inputs, Failure> {
        let inputs = if given.is_empty() {
            Inputs {
                texts: stdin_lines()?,
                from_stdin: true,
            }
        } else {
            Inputs {
                texts: given,
                from_stdin: false,
            }
        };
        if inputs.texts.is_empty() {
            return Err("no texts: give them as arguments or on stdin, one per line".into());
        }
        if let Some(i) = inputs.texts.iter().position(|t| t.trim().is_empty()) {
            return Err(format!(
                "{}: empty (empty texts are refused, as arguments and as stdin lines)",
                inputs.name(i)
            )
            .into());
        }
        Ok(inputs)
    }

    /// How a message names text `i`: its number in the whole run (from 1), its stdin line,
    /// and the start of its text (`input 74 (stdin line 74), "the quick…" (980 characters)`).
    fn name(&self, i: usize) -> String {
        let n = i + 1;
        let line = if self.from_stdin {
            format!(" (stdin line {n})")
        } else {
            String::new()
        };
        format!("input {n}{line}, {}", quote(&self.texts[i]))
    }
}

/// Stdin's lines (without `\n` or `\r\n`); one that is not UTF-8 is an error naming it.
fn stdin_lines() -> Result<Vec<String>, Failure> {
    let mut out = Vec::new();
    for (i, line) in io::stdin().lock().split(b'\n').enumerate() {
        let mut line = line.map_err(|e| format!("reading stdin: {e}"))?;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8(line)
            .map_err(|e| format!("stdin line {}: not UTF-8 ({e})", i + 1))?;
        out.push(text);
    }
    Ok(out)
}

/// Opens the device and the model.
fn open(args: &ModelArgs) -> Result<(Context, TextModel), Failure> {
    let ctx = Context::new()?;
    let options = TextOptions {
        truncate: args.truncate,
        max_batch: usize::try_from(args.max_batch)?,
        precision: match args.precision {
            PrecisionArg::F32 => roformer_wgpu::DType::F32,
            PrecisionArg::F16 => roformer_wgpu::DType::F16,
        },
        ..TextOptions::default()
    };
    let model = TextModel::load(&ctx, &args.model, options)?;
    Ok((ctx, model))
}

/// A number the user typed, as a count (`usize`): one past what memory could hold anyway
/// saturates, as "all" (top-k, lengths).
fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// How many tokens a text may have, and how a longer one is cut.
#[derive(Clone, Copy)]
enum Limit {
    /// The model's maximum; a longer text loses its end.
    Model,
    /// Room for a prompt before `new_tokens` generated ones in a sequence of at most `max`;
    /// a longer prompt loses its start.
    Generation {
        room: usize,
        new_tokens: usize,
        max: usize,
    },
}

/// Checks every input before any GPU work: its length (a warning when --truncate cuts it, an
/// error naming --truncate otherwise), then the task's own `check`. An error names the input
/// by its number in the whole run, so nothing is printed before a bad input fails the run.
fn check_inputs(
    model: &TextModel,
    inputs: &Inputs,
    limit: Limit,
    check: impl Fn(&str) -> roformer_wgpu::Result<()>,
) -> Result<(), Failure> {
    let max = model.max_tokens();
    let truncate = model.options().truncate;
    for (i, text) in inputs.texts.iter().enumerate() {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", inputs.name(i));
        let n = model.count_tokens(text, None).map_err(|e| at(&e))?;
        let (room, why, cut) = match limit {
            Limit::Model => (
                max,
                format!("more than the model's maximum of {max}"),
                "its end",
            ),
            Limit::Generation {
                room,
                new_tokens,
                max,
            } => (
                room,
                format!(
                    "with --max-new-tokens {new_tokens} more it would pass the model's maximum \
                     of {max}"
                ),
                "its start",
            ),
        };
        if n > room {
            if !truncate {
                return Err(at(&format!("{n} tokens, {why} (--truncate cuts {cut})")).into());
            }
            warn(&at(&format!(
                "{n} tokens, {why}; {cut} cut to leave {room} tokens"
            )));
        }
        check(text).map_err(|e| at(&e))?;
    }
    Ok(())
}

/// A warning on stderr (one that cannot be written is dropped: the run goes on).
fn warn(message: &str) {
    let _ = writeln!(io::stderr(), "warning: {message}");
}

/// Standard output, locked and buffered: written with `write!`, flushed after each group of
/// results (a reader sees them as they come) and at the end, every error returned.
type Out = BufWriter<StdoutLock<'static>>;

/// Runs `each` over the texts a group at a time, with a progress bar on a terminal when
/// there is more than one group, and prints every result as it comes.
fn in_batches<T>(
    texts: &[String],
    batch: u64,
    mut each: impl FnMut(&[&str]) -> Result<Vec<T>, Failure>,
    mut print: impl FnMut(&mut Out, &str, &T) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let chunk = count(batch).saturating_mul(4);
    let bar = if texts.len() > chunk {
        let bar = ProgressBar::new(texts.len() as u64);
        bar.set_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} texts {eta}",
        )?);
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let mut groups = || -> Result<(), Failure> {
        for part in texts.chunks(chunk) {
            let part: Vec<&str> = part.iter().map(String::as_str).collect();
            let results = each(&part)?;
            if results.len() != part.len() {
                return Err(format!("{} results for {} texts", results.len(), part.len()).into());
            }
            bar.suspend(|| -> Result<(), Failure> {
                for (t, r) in part.iter().zip(&results) {
                    print(&mut out, t, r)?;
                }
                Ok(out.flush()?)
            })?;
            bar.inc(part.len() as u64);
        }
        Ok(out.flush()?)
    };
    let result = groups();
    // Cleared on an error too, so that the message is not left under a stale bar.
    bar.finish_and_clear();
    result
}

/// Generates for each prompt in turn, writing its text as the tokens come: the prompt, then
/// each piece of the continuation once the decoded text has settled (a piece the next token
/// may still change, such as a word still being spelled out, waits for it).
fn stream_to_terminal(
    ctx: &Context,
    model: &TextModel,
    prompts: &Inputs,
    options: &GenerateOptions,
) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    for (i, prompt) in prompts.texts.iter().enumerate() {
        let mut s = generate::stream(ctx, model, &[prompt], options.clone())
            .map_err(|e| format!("{}: {e}", prompts.name(i)))?;
        write!(out, "{}", shown(prompt))?;
        out.flush()?;
        let mut printed = prompt.len();
        while ctx.block_on(s.next())?.is_some() {
            let text = s.generated(0)?.generated_text;
            // Write what has settled: the text up to its last space, once it extends what
            // is on the screen (WordPiece's "##" pieces join the word before them).
            let settled = text.rfind(' ').unwrap_or(0);
            if settled > printed && text.is_char_boundary(printed) {
                write!(out, "{}", shown(&text[printed..settled]))?;
                out.flush()?;
                printed = settled;
            }
        }
        let text = s.generated(0)?.generated_text;
        if text.is_char_boundary(printed) {
            writeln!(out, "{}", shown(&text[printed..]))?;
        } else {
            writeln!(out)?;
        }
    }
    Ok(out.flush()?)
}

/// A number above 0 (for --repetition-penalty).
fn positive_number(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("{text:?} is not a number above 0")),
    }
}

fn json_line(out: &mut Out, v: &impl Serialize) -> Result<(), Failure> {
    let line = serde_json::to_string(v)?;
    writeln!(out, "{line}")?;
    Ok(())
}

/// A text for a table line: control characters (newlines, tabs, escape codes) written as
/// Rust escapes (`\n`, `\u{1b}`), so that each input stays on its line and cannot drive the
/// terminal; everything else as it is.
fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Train(a) => train::run(*a),
        Command::FillMask { common, top_k } => {
            let inputs = Inputs::read(common.texts)?;
            let (ctx, model) = open(&common.model)?;
            check_inputs(&model, &inputs, Limit::Model, |t| {
                fill_mask::check(&model, t)
            })?;
            let json = common.model.json;
            in_batches(
                &inputs.texts,
                common.model.max_batch,
                |part| Ok(fill_mask::run_blocking(&ctx, &model, part, count(top_k))?),
                |out, text, masks| {
                    if json {
                        // transformers: a list for one mask, a list of lists for several
                        return match &masks[..] {
                            [one] => json_line(out, one),
                            many => json_line(out, &many),
                        };
                    }
                    writeln!(out, "{}", shown(text))?;
                    for (m, guesses) in masks.iter().enumerate() {
                        for g in guesses {
                            writeln!(
                                out,
                                "  mask {m}  {:>7.4}  {:>6}  {:<12}  {}",
                                g.score,
                                g.token,
                                shown(&g.token_str),
                                shown(&g.sequence)
                            )?;
                        }
                    }
                    Ok(())
                },
            )
        }
        Command::Classify { common, all } => {
            let inputs = Inputs::read(common.texts)?;
            let (ctx, model) = open(&common.model)?;
            check_inputs(&model, &inputs, Limit::Model, |_| Ok(()))?;
            let json = common.model.json;
            in_batches(
                &inputs.texts,
                common.model.max_batch,
                |part| Ok(classify::run_blocking(&ctx, &model, part, None, None)?),
                |out, text, labels| {
                    match (json, all) {
                        (true, true) => json_line(out, labels)?,
                        (true, false) => json_line(out, &labels[0])?,
                        (false, _) => {
                            let shown_labels = if all { &labels[..] } else { &labels[..1] };
                            let cells: Vec<String> = shown_labels
                                .iter()
                                .map(|l| format!("{} {:.4}", shown(&l.label), l.score))
                                .collect();
                            writeln!(out, "{:<40}  {}", shown(text), cells.join("  "))?;
                        }
                    }
                    Ok(())
                },
            )
        }
        Command::TokenClassify { common } => {
            let inputs = Inputs::read(common.texts)?;
            let (ctx, model) = open(&common.model)?;
            check_inputs(&model, &inputs, Limit::Model, |_| Ok(()))?;
            let json = common.model.json;
            in_batches(
                &inputs.texts,
                common.model.max_batch,
                |part| Ok(token_classify::run_blocking(&ctx, &model, part)?),
                |out, text, entities| {
                    if json {
                        return json_line(out, entities);
                    }
                    writeln!(out, "{}", shown(text))?;
                    for e in entities {
                        writeln!(
                            out,
                            "  {:<10} {:>7.4}  {:>4}..{:<4} {}",
                            shown(&e.entity_group),
                            e.score,
                            e.start,
                            e.end,
                            shown(&e.word)
                        )?;
                    }
                    Ok(())
                },
            )
        }
        Command::Embed {
            common,
            pooling,
            normalize,
        } => {
            let inputs = Inputs::read(common.texts)?;
            let (ctx, model) = open(&common.model)?;
            check_inputs(&model, &inputs, Limit::Model, |_| Ok(()))?;
            let pooling = match pooling {
                PoolingArg::Mean => Pooling::Mean,
                PoolingArg::Cls => Pooling::Cls,
            };
            let json = common.model.json;
            in_batches(
                &inputs.texts,
                common.model.max_batch,
                |part| {
                    Ok(embed::sentences_blocking(
                        &ctx, &model, part, pooling, normalize,
                    )?)
                },
                |out, text, v| {
                    if json {
                        return json_line(out, v);
                    }
                    let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
                    writeln!(
                        out,
                        "{:<40}  [{}, ...] ({} values)",
                        shown(text),
                        head.join(", "),
                        v.len()
                    )?;
                    Ok(())
                },
            )
        }
        Command::Answer {
            model: args,
            question,
            context,
            top_k,
            max_answer_len,
        } => {
            if question.trim().is_empty() {
                return Err("--question is empty".into());
            }
            let contexts = match context {
                Some(c) if c.trim().is_empty() => return Err("--context is empty".into()),
                Some(c) => Inputs {
                    texts: vec![c],
                    from_stdin: false,
                },
                None => Inputs::read(Vec::new())?,
            };
            let (ctx, model) = open(&args)?;
            // A context of any length is cut into windows: only answer's own checks apply.
            for (i, c) in contexts.texts.iter().enumerate() {
                answer::check(&model, &question, c)
                    .map_err(|e| format!("{}: {e}", contexts.name(i)))?;
            }
            let options = AnswerOptions {
                top_k: count(top_k),
                max_answer_len: count(max_answer_len),
            };
            in_batches(
                &contexts.texts,
                args.max_batch,
                |part| {
                    let inputs: Vec<(&str, &str)> =
                        part.iter().map(|c| (question.as_str(), *c)).collect();
                    Ok(answer::run_blocking(&ctx, &model, &inputs, options)?)
                },
                |out, context, answers| {
                    if args.json {
                        return match &answers[..] {
                            [one] => json_line(out, one),
                            many => json_line(out, &many),
                        };
                    }
                    writeln!(out, "{}  ({})", shown(&question), shown(context))?;
                    for a in answers {
                        writeln!(
                            out,
                            "  {:>7.4}  {:>4}..{:<4} {}",
                            a.score,
                            a.start,
                            a.end,
                            shown(&a.answer)
                        )?;
                    }
                    Ok(())
                },
            )
        }
        Command::Generate {
            common,
            max_new_tokens,
            repetition_penalty,
            no_repeat_ngram_size,
            sample,
            temperature,
            top_k,
            top_p,
            seed,
        } => {
            let prompts = Inputs::read(common.texts)?;
            let (ctx, model) = open(&common.model)?;
            // The folder's generation_config.json, then what the command line says.
            let mut options = GenerateOptions::for_model(&model);
            if let Some(n) = max_new_tokens {
                options.max_new_tokens = n;
                options.max_length = None;
            }
            if let Some(p) = repetition_penalty {
                options.repetition_penalty = p;
            }
            if let Some(n) = no_repeat_ngram_size {
                options.no_repeat_ngram_size = n;
            }
            if sample {
                options.decoding = Decoding::Sample {
                    temperature,
                    top_k,
                    top_p,
                    seed,
                };
            }
            let max = generate::max_length(&model);
            let new_tokens = options.max_new_tokens;
            let room = generate::prompt_room(&model, new_tokens).map_err(|_| {
                format!(
                    "--max-new-tokens {new_tokens} leaves no room for a prompt: this model \
                     takes {max} tokens at most, the prompt's and the new ones together \
                     (--max-new-tokens must be below {max})"
                )
            })?;
            let limit = Limit::Generation {
                room,
                new_tokens,
                max,
            };
            check_inputs(&model, &prompts, limit, |_| Ok(()))?;
            let json = common.model.json;
            // On a terminal, each prompt's text appears as it is generated; otherwise (a
            // pipe, a file, --json) one line per prompt, prompts batched.
            if !json && io::stdout().is_terminal() {
                return stream_to_terminal(&ctx, &model, &prompts, &options);
            }
            in_batches(
                &prompts.texts,
                common.model.max_batch,
                |part| Ok(generate::run_blocking(&ctx, &model, part, options.clone())?),
                |out, _, g| {
                    if json {
                        return json_line(out, g);
                    }
                    writeln!(out, "{}", shown(&g.generated_text))?;
                    Ok(())
                },
            )
        }
        Command::Tokenize {
            model,
            json,
            texts: given,
        } => {
            let inputs = Inputs::read(given)?;
            let tokenizer = Tokenizer::from_dir(&model)?;
            let mut out = BufWriter::new(io::stdout().lock());
            for (i, text) in inputs.texts.iter().enumerate() {
                let e = tokenizer
                    .encode(text)
                    .map_err(|e| format!("{}: {e}", inputs.name(i)))?;
                if json {
                    json_line(
                        &mut out,
                        &serde_json::json!({
                            "input_ids": e.input_ids,
                            "token_type_ids": e.token_type_ids,
                            "attention_mask": e.attention_mask,
                            "offset_mapping": e.offsets,
                            "tokens": e.tokens,
                        }),
                    )?;
                } else {
                    writeln!(out, "{}", shown(text))?;
                    for i in 0..e.len() {
                        writeln!(
                            out,
                            "  {:>6}  {:<16} {:>4}..{:<4}",
                            e.input_ids[i],
                            shown(&e.tokens[i]),
                            e.offsets[i].0,
                            e.offsets[i].1
                        )?;
                    }
                }
            }
            Ok(out.flush()?)
        }
    }
}
