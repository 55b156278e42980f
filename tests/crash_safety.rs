//! Killing a training process (SIGKILL) at random moments, during checkpoint writes too,
//! never loses work: after every kill the newest checkpoint loads, `resume` continues, and
//! the finished run's losses and weights equal an uninterrupted run's, bit for bit.
//!
//! The test re-runs its own binary as the training process (with `ROFORMER_CRASH_WORKER`
//! naming the output folder) and kills it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use roformer_lab::listops::ListOpsConfig;
use roformer_lab::lra::{self, ModelSize};
use roformer_wgpu::model::{AttentionKind, RoFormer};
use roformer_wgpu::train::{self, Task, Trainer, TrainerState, TrainingArguments};
use roformer_wgpu::{io, Context};

const WORKER: &str = "ROFORMER_CRASH_WORKER";
const TEST: &str = "killed_runs_resume_and_reproduce_the_uninterrupted_run";

fn arguments() -> TrainingArguments {
    TrainingArguments {
        seed: 11,
        per_device_train_batch_size: 8,
        max_steps: Some(300),
        learning_rate: 3e-3,
        warmup_steps: 5,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        save_steps: 1,
        save_total_limit: Some(2),
        logging_steps: 1,
        ..TrainingArguments::default()
    }
}

fn newest(out: &Path) -> Option<PathBuf> {
    train::checkpoints(out).unwrap().pop().map(|(_, dir)| dir)
}

/// Trains into `out`, continuing from its newest checkpoint when there is one.
fn train_into(ctx: &Context, out: &Path) -> (TrainerState, Vec<io::NamedTensor>) {
    let args = arguments();
    let config = ListOpsConfig {
        max_depth: 3,
        max_args: 4,
        min_length: 4,
        max_length: 20,
        train: 160,
        valid: 16,
        test: 16,
    };
    let data = lra::listops(config, args.seed).unwrap();
    let size = ModelSize {
        layers: 1,
        hidden: 16,
        heads: 2,
        intermediate: 24,
        attention: AttentionKind::Linear,
        window: 0,
        global_tokens: 0,
    };
    let checkpoint = newest(out);
    let model = lra::model(ctx, &data, &size, &args, checkpoint.as_deref()).unwrap();
    let task = Task::TextClassification;
    let mut trainer = match &checkpoint {
        Some(dir) => Trainer::resume(ctx, &model, data.train, None, dir, out, vec![]).unwrap(),
        None => Trainer::new(
            ctx,
            &model,
            task,
            args,
            data.train,
            None,
            &data.labels,
            out,
            vec![],
        )
        .unwrap(),
    };
    trainer.train(|_| {}).unwrap();
    (
        trainer.state().clone(),
        model.params().download(ctx).unwrap(),
    )
}

/// Everything a resume reads must load.
fn check_newest_loads(ctx: &Context, out: &Path) -> Option<u64> {
    let dir = newest(out)?;
    RoFormer::from_pretrained(ctx, dir.join("config.json"), dir.join("model.safetensors"))
        .expect("weights load");
    let opt =
        io::read_safetensors(dir.join("optimizer.safetensors")).expect("optimizer state loads");
    assert!(opt.contains_key("adamw.m") && opt.contains_key("adamw.v"));
    Some(train::read_state(&dir).expect("state loads").global_step)
}

fn leftover_temporaries(out: &Path) -> bool {
    std::fs::read_dir(out)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        })
        .unwrap_or(false)
}

fn spawn_worker(out: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(WORKER, out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn killed_runs_resume_and_reproduce_the_uninterrupted_run() {
    if let Some(out) = std::env::var_os(WORKER) {
        let ctx = Context::new().unwrap();
        train_into(&ctx, Path::new(&out));
        return;
    }
    let ctx = Context::new().unwrap();
    let base: PathBuf = std::env::temp_dir().join(format!("roformer-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (reference, reference_weights) = train_into(&ctx, &base.join("reference"));
    assert_eq!(reference.global_step, 300);

    let out = base.join("killed");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut kills, mut mid_write, mut last_step) = (0, 0, 0);
    let start = Instant::now();
    while kills < 30 && start.elapsed() < Duration::from_secs(120) {
        let mut child = spawn_worker(&out);
        std::thread::sleep(Duration::from_millis(rng.random_range(150..900)));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        mid_write += leftover_temporaries(&out) as usize;
        if let Some(step) = check_newest_loads(&ctx, &out) {
            assert!(
                step >= last_step,
                "the newest checkpoint went back from {last_step} to {step}"
            );
            last_step = step;
        }
    }
    let status = spawn_worker(&out).wait().unwrap();
    assert!(status.success(), "the last, uninterrupted resume failed");
    eprintln!("{kills} kills ({mid_write} while a checkpoint was being written), last checkpoint before finishing: step {last_step}");
    assert!(kills >= 10, "only {kills} kills happened");

    let dir = newest(&out).unwrap();
    let finished = train::read_state(&dir).unwrap();
    let bits = |s: &TrainerState| {
        s.log_history
            .iter()
            .filter_map(|e| Some((e.step, e.get("loss")?.to_bits())))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&reference).len(), 300);
    assert_eq!(
        bits(&finished),
        bits(&reference),
        "losses differ from the uninterrupted run"
    );
    let model =
        RoFormer::from_pretrained(&ctx, dir.join("config.json"), dir.join("model.safetensors"))
            .unwrap();
    assert_eq!(
        model.params().download(&ctx).unwrap(),
        reference_weights,
        "final weights differ"
    );
    std::fs::remove_dir_all(&base).unwrap();
}
