//! `roformer train`: a model trained on the user's files with the library's trainer
//! (`roformer_wgpu::train`), transformers' `TrainingArguments` as options in kebab case.
//!
//! Built with the `mpi` feature and started by an MPI launcher (`mpirun -np N roformer
//! train ...`), each process is a rank of a data-parallel run on its own adapter
//! (`roformer_wgpu::train::distributed`): rank 0 prints and saves, a rank that fails ends
//! the whole run.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use roformer_wgpu::io::read_checkpoint;
use roformer_wgpu::model::{RoFormer, RoFormerConfig};
use roformer_wgpu::text::Tokenizer;
use roformer_wgpu::train::{
    checkpoints, model_for, Columns, DataOptions, Dataset, Distributed, LabelNames, LogEntry,
    Precision, SchedulerType, Task, TextStream, TrainData, TrainEvent, Trainer, TrainingArguments,
    DEFAULT_SHUFFLE_BUFFER_SIZE,
};
use roformer_wgpu::Context;

use super::Failure;

/// The options of `roformer train`.
#[derive(Args)]
pub struct TrainArgs {
    /// What to train: text-classification, token-classification, fill-mask or
    /// text-generation.
    #[arg(long, value_parser = parse_task)]
    task: Task,
    /// The model folder to start from (config.json, weights, tokenizer).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    model: Option<PathBuf>,
    /// A new model from this config.json (HF's initialisation from --seed); needs
    /// --tokenizer.
    #[arg(long, requires = "tokenizer")]
    config: Option<PathBuf>,
    /// The tokenizer's folder, for a new model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// The training file: .csv or .tsv (a header row), .jsonl, .txt (a document a line),
    /// .conll.
    #[arg(long)]
    train: PathBuf,
    /// An evaluation file, in the same kinds (held in memory, also when training streams).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Read and tokenize the training file as training goes, a shuffle buffer in memory
    /// rather than the whole file (datasets' streaming=True): for fill-mask and
    /// text-generation on a .txt corpus, of any size; needs --max-steps.
    #[arg(long, requires = "max_steps", conflicts_with = "group_by_length")]
    streaming: bool,
    /// --streaming: examples in the shuffle buffer (1: file order).
    #[arg(long, default_value_t = DEFAULT_SHUFFLE_BUFFER_SIZE as u64, requires = "streaming",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    shuffle_buffer_size: u64,
    /// Where checkpoints and the trained model go.
    #[arg(long)]
    output_dir: PathBuf,
    /// Continue from the newest checkpoint in --output-dir.
    #[arg(long)]
    resume: bool,
    /// One JSON line per log and per evaluation (transformers' log_history keys), instead
    /// of a progress bar, a table and curves.png.
    #[arg(long)]
    json: bool,
    /// The text column.
    #[arg(long, default_value = "text")]
    text_column: String,
    /// The second text of a pair (used when the file has it).
    #[arg(long, default_value = "text_pair")]
    text_pair_column: String,
    /// The label column.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// The words column (token classification).
    #[arg(long, default_value = "tokens")]
    tokens_column: String,
    /// The tags column (token classification).
    #[arg(long, default_value = "tags")]
    tags_column: String,
    /// Text classification: single_label_classification, multi_label_classification
    /// (names separated by commas, or a JSON list) or regression (a number, or a list);
    /// default the model config's problem_type.
    #[arg(long, value_parser = ["single_label_classification", "multi_label_classification", "regression"])]
    problem_type: Option<String>,
    /// Fill-mask: the share of tokens masked, above 0 and below 1.
    #[arg(long, default_value_t = 0.15, value_parser = share)]
    mlm_probability: f64,
    /// Fill-mask: mask whole words (jieba's words for a RoFormerTokenizer).
    #[arg(long)]
    whole_word_mask: bool,
    /// Longest sequence in tokens (text generation: the block size); default the model's
    /// positions.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_length: Option<u64>,
    /// AdamW's peak learning rate.
    #[arg(long, default_value_t = 5e-5, value_parser = non_negative)]
    learning_rate: f64,
    /// AdamW's weight decay (not for biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    weight_decay: f64,
    /// Updates of linear warm-up.
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Warm-up as a share of all updates (when --warmup-steps is 0).
    #[arg(long, default_value_t = 0.0, value_parser = ratio)]
    warmup_ratio: f64,
    /// linear, cosine, constant or constant_with_warmup.
    #[arg(long, default_value = "linear", value_parser = parse_scheduler)]
    lr_scheduler_type: SchedulerType,
    /// Sequences per batch (per rank, in a data-parallel run), 1 to 4096 [default: 8]. A
    /// resumed run keeps its checkpoint's, and refuses another.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    per_device_train_batch_size: Option<u64>,
    /// Sequences per evaluation batch, 1 to 4096.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    per_device_eval_batch_size: u64,
    /// Batches whose gradients make one update, 1 to 1024.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    gradient_accumulation_steps: u64,
    /// Passes over the training data (when --max-steps is not given).
    #[arg(long, default_value_t = 3.0, value_parser = positive)]
    num_train_epochs: f64,
    /// Updates in all (wins over --num-train-epochs).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_steps: Option<u64>,
    /// Clip gradients to this global norm (0: never).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative)]
    max_grad_norm: f64,
    /// The seed of everything random.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Log every N updates.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    logging_steps: u64,
    /// Evaluate the --eval file every N updates (default: once, at the end).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    eval_steps: Option<u64>,
    /// Checkpoint every N updates (0: at the end only).
    #[arg(long, default_value_t = 500)]
    save_steps: u64,
    /// Keep at most N checkpoints.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    save_total_limit: Option<u64>,
    /// At the end, take the best evaluation's checkpoint.
    #[arg(long)]
    load_best_model_at_end: bool,
    /// The metric that decides the best (eval_loss by default; e.g. accuracy, f1).
    #[arg(long)]
    metric_for_best_model: Option<String>,
    /// Stop after N evaluations without improving.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    early_stopping_patience: Option<u64>,
    /// f32, or mixed (f16 passes, f32 master weights; needs shader-f16).
    #[arg(long, default_value = "f32", value_parser = parse_precision)]
    precision: Precision,
    /// Visit the data in file order (to compare a run with another library's).
    #[arg(long)]
    no_shuffle: bool,
    /// Batch texts of similar lengths together (less padding, faster).
    #[arg(long)]
    group_by_length: bool,
    /// Pad batches to a multiple of N tokens, 1 to 4096: each padded length is a session
    /// planned once, so a larger N plans fewer sessions and pads more.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pad_to_multiple_of: u64,
    /// 1: batches are read, tokenized, masked and padded on a background thread while the
    /// GPU runs the update before; 0: on the training thread (the same batches).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=1))]
    dataloader_num_workers: u64,
    /// Data-parallel runs: seconds a rank waits for the others in a collective (while rank
    /// 0 evaluates and saves, too) before it ends the run with an error.
    #[cfg(feature = "mpi")]
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    ddp_timeout: u64,
    /// Data-parallel runs: megabytes of gradients read back and averaged together (a
    /// fraction is allowed); smaller buckets start averaging earlier in the backward pass.
    #[cfg(feature = "mpi")]
    #[arg(long, default_value_t = 25.0, value_parser = positive)]
    ddp_bucket_cap_mb: f64,
}

fn parse_task(s: &str) -> Result<Task, String> {
    s.parse().map_err(|e: roformer_wgpu::Error| e.to_string())
}

fn parse_scheduler(s: &str) -> Result<SchedulerType, String> {
    s.parse().map_err(|e: roformer_wgpu::Error| e.to_string())
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    match s {
        "f32" => Ok(Precision::F32),
        "mixed" => Ok(Precision::Mixed),
        "f16" => Err(
            "training keeps f32 master weights: --precision mixed runs the passes in \
                      f16"
            .into(),
        ),
        other => Err(format!("{other:?}: f32 or mixed")),
    }
}

fn number(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("{s:?} is not a number"))
}

fn non_negative(s: &str) -> Result<f64, String> {
    number(s).and_then(|x| {
        (x >= 0.0)
            .then_some(x)
            .ok_or_else(|| format!("{s} is below 0"))
    })
}

fn positive(s: &str) -> Result<f64, String> {
    number(s).and_then(|x| {
        (x > 0.0)
            .then_some(x)
            .ok_or_else(|| format!("{s} is not above 0"))
    })
}

fn ratio(s: &str) -> Result<f64, String> {
    number(s).and_then(|x| {
        (0.0..=1.0)
            .contains(&x)
            .then_some(x)
            .ok_or_else(|| format!("{s} is not between 0 and 1"))
    })
}

fn share(s: &str) -> Result<f64, String> {
    number(s).and_then(|x| {
        (x > 0.0 && x < 1.0)
            .then_some(x)
            .ok_or_else(|| format!("{s} is not above 0 and below 1"))
    })
}

impl TrainArgs {
    fn training_arguments(&self) -> TrainingArguments {
        let count = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        TrainingArguments {
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio,
            lr_scheduler_type: self.lr_scheduler_type,
            per_device_train_batch_size: count(self.per_device_train_batch_size.unwrap_or(8)),
            per_device_eval_batch_size: count(self.per_device_eval_batch_size),
            gradient_accumulation_steps: count(self.gradient_accumulation_steps),
            num_train_epochs: self.num_train_epochs,
            max_steps: self.max_steps,
            max_grad_norm: self.max_grad_norm as f32,
            seed: self.seed,
            max_length: self.max_length.map(count),
            logging_steps: self.logging_steps,
            eval_steps: self.eval_steps,
            save_steps: self.save_steps,
            save_total_limit: self.save_total_limit.map(count),
            load_best_model_at_end: self.load_best_model_at_end,
            metric_for_best_model: self.metric_for_best_model.clone(),
            early_stopping_patience: self.early_stopping_patience.map(count),
            precision: self.precision,
            shuffle: !self.no_shuffle,
            group_by_length: self.group_by_length,
            pad_to_multiple_of: count(self.pad_to_multiple_of),
            dataloader_num_workers: count(self.dataloader_num_workers),
            ..TrainingArguments::default()
        }
    }
}

/// The tokenizer's files in a folder (copied beside every saved model).
fn tokenizer_files(dir: &Path) -> Vec<PathBuf> {
    [
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ]
    .iter()
    .map(|f| dir.join(f))
    .filter(|p| p.exists())
    .collect()
}

/// Trains alone, or as a rank of a data-parallel run when an MPI launcher started this
/// process (the `mpi` feature): then a rank that fails prints its error and ends the run
/// on every rank (returning would finalise MPI, which waits for the others).
pub fn run(a: TrainArgs) -> Result<(), Failure> {
    #[cfg(feature = "mpi")]
    {
        let timeout = std::time::Duration::from_secs(a.ddp_timeout);
        if let Some(mut d) = Distributed::from_launcher(timeout)? {
            d.set_bucket_bytes((a.ddp_bucket_cap_mb * (1 << 20) as f64) as usize);
            return match train(a, Some(&d)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    stderr_line(&format!("rank {}: error: {e}", d.rank()));
                    d.abort(1)
                }
            };
        }
    }
    train(a, None)
}

fn train(a: TrainArgs, distributed: Option<&Distributed>) -> Result<(), Failure> {
    let main = distributed.is_none_or(Distributed::is_main);
    let args = a.training_arguments();
    args.check()?;
    let (config_path, tokenizer_dir) = match (&a.model, &a.config, &a.tokenizer) {
        (Some(m), _, _) => (m.join("config.json"), m.clone()),
        (None, Some(c), Some(t)) => (c.clone(), t.clone()),
        _ => return Err("give --model DIR, or --config FILE with --tokenizer DIR".into()),
    };
    let tokenizer = Tokenizer::from_dir(&tokenizer_dir)?;
    let mut config = RoFormerConfig::from_file(&config_path)?;
    // The classifier's problem: the option, else the config's (transformers' rule).
    let problem_type = a
        .problem_type
        .clone()
        .unwrap_or_else(|| config.classification_problem().to_string());
    if a.task == Task::TextClassification {
        config.problem_type = Some(problem_type.clone());
    }
    let positions = config.max_position_embeddings;
    let max_length = args.max_length.unwrap_or(positions).min(positions);
    let options = DataOptions {
        task: a.task,
        columns: Columns {
            text: a.text_column.clone(),
            text_pair: a.text_pair_column.clone(),
            label: a.label_column.clone(),
            tokens: a.tokens_column.clone(),
            tags: a.tags_column.clone(),
        },
        max_length,
        mlm_probability: a.mlm_probability,
        whole_word_mask: a.whole_word_mask,
        problem_type: problem_type.clone(),
    };
    // Labels: the model's when its config names them (and it is already this task's
    // model); else the training file's.
    let architecture = config
        .extra
        .get("architectures")
        .and_then(|v| v.get(0))
        .and_then(|v| v.as_str());
    let same_head = architecture == Some(a.task.head().architecture());
    let mut labels = if a.model.is_some() && same_head {
        LabelNames::of_model(&config).unwrap_or_default()
    } else {
        LabelNames::default()
    };
    let train: TrainData = if a.streaming {
        let buffer = usize::try_from(a.shuffle_buffer_size).unwrap_or(usize::MAX);
        TextStream::open(&a.train, &options, &tokenizer, buffer)?.into()
    } else {
        let train = Dataset::load(&a.train, &options, &tokenizer, &mut labels)?;
        if problem_type == "regression" && a.task == Task::TextClassification {
            // Regression's width is the data's targets.
            config.num_labels = Some(train.examples[0].float_labels.len());
        }
        train.into()
    };
    let eval = a
        .eval
        .as_ref()
        .map(|path| {
            // The evaluation file's labels must be the training file's.
            let mut fixed = LabelNames {
                from_model: true,
                ..labels.clone()
            };
            Dataset::load(path, &options, &tokenizer, &mut fixed)
        })
        .transpose()?;
    let ctx = match distributed {
        Some(d) => {
            let ctx = Context::with_options(d.context_options())?;
            stderr_line(&format!(
                "rank {} of {} (pid {}, local rank {}): {}",
                d.rank(),
                d.size(),
                std::process::id(),
                d.local_rank(),
                ctx.capabilities().adapter_name
            ));
            ctx
        }
        None => Context::new()?,
    };
    let extra = tokenizer_files(&tokenizer_dir);
    let resume_from = if a.resume {
        let found = checkpoints(&a.output_dir)?;
        let (_, dir) = found.last().cloned().ok_or_else(|| {
            format!(
                "--resume: {} holds no complete checkpoint",
                a.output_dir.display()
            )
        })?;
        Some(dir)
    } else {
        None
    };
    let (model, fresh): (RoFormer, Vec<String>) = match &resume_from {
        Some(dir) => {
            let c = RoFormerConfig::from_file(dir.join("config.json"))?;
            let weights = read_checkpoint(dir.join("model.safetensors"))?;
            model_for(&ctx, c, a.task, &labels, &args, Some(&weights))?
        }
        None => {
            let weights = a.model.as_ref().map(read_checkpoint).transpose()?;
            model_for(&ctx, config, a.task, &labels, &args, weights.as_ref())?
        }
    };
    if a.model.is_some() && !fresh.is_empty() && resume_from.is_none() && main {
        // As transformers warns when it initialises what a checkpoint lacks.
        super::warn(&format!(
            "{} weights are not in the checkpoint and were newly initialised: {}",
            fresh.len(),
            fresh.join(", ")
        ));
    }
    let mut trainer = match &resume_from {
        Some(dir) => Trainer::resume(&ctx, &model, train, eval, dir, &a.output_dir, extra)?,
        None => Trainer::new(
            &ctx,
            &model,
            a.task,
            args,
            train,
            eval,
            &labels,
            &a.output_dir,
            extra,
        )?,
    };
    let saved_batch = trainer.state().args.per_device_train_batch_size;
    if let (Some(dir), Some(given)) = (&resume_from, a.per_device_train_batch_size) {
        if given as usize != saved_batch {
            return Err(format!(
                "--per-device-train-batch-size {given}: the checkpoint {} trained with {saved_batch} \
                 (on {} rank(s)); resume with the same, or leave the option out",
                dir.display(),
                trainer.state().world_size
            )
            .into());
        }
    }
    if let Some(d) = distributed {
        trainer = trainer.distributed(d)?;
    }
    let mut out = io::stdout().lock();
    let total = trainer.state().max_steps;
    let bar = if a.json || !main {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total);
        bar.set_style(ProgressStyle::with_template(
            "{bar:40} {pos}/{len} updates, loss {msg} {eta}",
        )?);
        bar.set_position(trainer.state().global_step);
        bar
    };
    let mut failed: Option<io::Error> = None;
    let mut write = |line: String, bar: &ProgressBar| {
        if failed.is_none() {
            if let Err(e) = bar.suspend(|| writeln!(out, "{line}").and_then(|_| out.flush())) {
                failed = Some(e);
            }
        }
    };
    let result = trainer.train(|event| match event {
        TrainEvent::Step { step, loss, .. } => {
            bar.set_position(step);
            bar.set_message(format!("{loss:.4}"));
        }
        TrainEvent::Log(e) | TrainEvent::Eval(e) => {
            let line = if a.json {
                serde_json::to_string(e).unwrap_or_default()
            } else {
                table_row(e)
            };
            write(line, &bar);
        }
        TrainEvent::Checkpoint(path) => {
            if !a.json {
                write(format!("saved     {}", path.display()), &bar);
            }
        }
    });
    bar.finish_and_clear();
    result?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    if !a.json && main {
        let curves = a.output_dir.join("curves.png");
        match plot(&curves, &trainer.state().log_history) {
            Ok(()) => println!("curves    {}", curves.display()),
            Err(e) => println!("(no plot: {e})"),
        }
        println!("model     {}", a.output_dir.display());
    }
    Ok(())
}

/// A log entry as a table row: its step, epoch and values.
fn table_row(e: &LogEntry) -> String {
    let values: Vec<String> = e
        .values
        .iter()
        .map(|(k, v)| format!("{k} {v:.5}"))
        .collect();
    format!(
        "{:<9} step {:>6} epoch {:>6.2}  {}",
        if e.is_eval() { "eval" } else { "train" },
        e.step,
        e.epoch,
        values.join("  ")
    )
}

/// The training loss and the evaluation loss against the update, and the first evaluation
/// metric beside them.
fn plot(path: &Path, history: &[LogEntry]) -> Result<(), Failure> {
    use plotters::prelude::*;
    let text = register_sans_serif();
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let last = history.iter().map(|e| e.step).max().unwrap_or(1).max(1) as f64;
    let series = |name: &str, eval: bool| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter(|e| e.is_eval() == eval)
            .filter_map(|e| Some((e.step as f64, e.get(name)?)))
            .collect()
    };
    let metric = history
        .iter()
        .filter(|e| e.is_eval())
        .flat_map(|e| e.values.keys())
        .find(|k| k.as_str() != "eval_loss" && k.as_str() != "eval_perplexity")
        .cloned();
    let panels = [
        (
            "loss".to_string(),
            series("loss", false),
            series("eval_loss", true),
        ),
        (
            metric.clone().unwrap_or_else(|| "eval".into()),
            Vec::new(),
            metric.map(|m| series(&m, true)).unwrap_or_default(),
        ),
    ];
    for (area, (title, train, eval)) in [&left, &right].into_iter().zip(panels) {
        let top = train
            .iter()
            .chain(&eval)
            .map(|p| p.1)
            .fold(0.0f64, f64::max)
            .max(1e-3)
            * 1.05;
        let mut b = ChartBuilder::on(area);
        b.margin(15);
        if text {
            b.caption(title, ("sans-serif", 22))
                .x_label_area_size(35)
                .y_label_area_size(50);
        }
        let mut chart = b.build_cartesian_2d(0f64..last, 0f64..top)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("update");
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        chart.draw_series(LineSeries::new(train, BLUE.stroke_width(2)))?;
        chart.draw_series(LineSeries::new(eval.clone(), RED.stroke_width(2)))?;
        chart.draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled())))?;
    }
    root.present()?;
    Ok(())
}

/// Registers a system sans-serif font for plot text (`ROFORMER_FONT` names one); false
/// when none is found, and the plot is drawn without text. (The examples have the same in
/// `roformer_lab::fonts`, which the library's binary cannot depend on.)
fn register_sans_serif() -> bool {
    let candidates = [
        std::env::var("ROFORMER_FONT").unwrap_or_default(),
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
        "/usr/share/fonts/TTF/DejaVuSans.ttf".into(),
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

/// One line on stderr in one write, so that the line of one rank never interleaves with
/// another's in the launcher's output (`writeln!` writes each piece of its format apart).
fn stderr_line(text: &str) {
    let _ = io::stderr().write_all(format!("{text}\n").as_bytes());
}
