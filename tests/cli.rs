//! The `roformer` command end to end on the text fixtures' model folders: each task's `--json`
//! line against transformers' pipeline output (tests/fixtures/text/<task>/expected.json),
//! stdin input, and bad input answered with a message and a failing status, never a panic;
//! then hostile use (issue 29): closed pipes and full disks, huge numbers, errors naming the
//! input in the whole run, empty texts, control characters.

#![cfg(feature = "cli")]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn dir(task: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(task)
        .display()
        .to_string()
}

fn expected(task: &str) -> Value {
    let text = std::fs::read_to_string(PathBuf::from(dir(task)).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The binary, with `XDG_RUNTIME_DIR` set where the environment has none: EGL (wgpu's GL
/// backend is enumerated too) otherwise prints "error: XDG_RUNTIME_DIR is invalid" on
/// stderr, which the tests would take for one of ours.
fn roformer_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roformer"));
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        command.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    command
}

fn roformer(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = roformer_command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// The JSON lines of a successful run.
fn json_lines(args: &[&str], stdin: Option<&[u8]>) -> Vec<Value> {
    let out = roformer(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "roformer {args:?} failed: {stderr}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn close(a: &Value, b: &Value) -> bool {
    (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-4
}

#[test]
fn fill_mask_prints_transformers_fields() {
    let want = expected("fill_mask");
    let texts: Vec<&str> = want["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut args = vec!["fill-mask", "--json", "--model"];
    let d = dir("fill_mask");
    args.push(&d);
    args.extend(&texts);
    let lines = json_lines(&args, None);
    let outputs = want["outputs"].as_array().unwrap();
    assert_eq!(lines.len(), outputs.len());
    for (got, want) in lines.iter().zip(outputs) {
        let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
        assert_eq!(got.len(), want.len(), "guesses");
        for (g, w) in got.iter().zip(want) {
            let keys: Vec<&String> = g.as_object().unwrap().keys().collect();
            let mut want_keys: Vec<&String> = w.as_object().unwrap().keys().collect();
            want_keys.sort();
            assert_eq!(keys, want_keys);
            assert_eq!(g["token"], w["token"]);
            assert_eq!(g["sequence"], w["sequence"]);
            assert!(close(&g["score"], &w["score"]));
        }
    }
}

#[test]
fn classify_reads_stdin_one_text_per_line() {
    let want = expected("classify");
    let input: String = want["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| format!("{}\n", t.as_str().unwrap()))
        .collect();
    let lines = json_lines(
        &["classify", "--json", "--model", &dir("classify")],
        Some(input.as_bytes()),
    );
    let outputs = want["outputs"].as_array().unwrap();
    assert_eq!(lines.len(), outputs.len());
    for (g, w) in lines.iter().zip(outputs) {
        assert_eq!(g["label"], w[0]["label"]);
        assert!(close(&g["score"], &w[0]["score"]));
    }
}

#[test]
fn embed_answer_generate_and_entities_end_to_end() {
    let e = expected("embed");
    let text = e["inputs"][0].as_str().unwrap();
    let v = &json_lines(&["embed", "--json", "--model", &dir("embed"), text], None)[0];
    let got: Vec<f64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let want: Vec<f64> = e["mean"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "embedding size");
    let err = roformer_wgpu::check::rel_l2(&got, &want);
    assert!(err < 1e-4, "embedding off by {err}");

    let qa = &expected("qa")["cases"][0];
    let got = &json_lines(
        &[
            "answer",
            "--json",
            "--model",
            &dir("qa"),
            "--question",
            qa["question"].as_str().unwrap(),
            "--context",
            qa["context"].as_str().unwrap(),
        ],
        None,
    )[0];
    assert_eq!(got["answer"], qa["answer"]["answer"]);
    assert_eq!(
        (&got["start"], &got["end"]),
        (&qa["answer"]["start"], &qa["answer"]["end"])
    );

    let g = expected("generate");
    let prompt = g["inputs"][0].as_str().unwrap();
    let got = &json_lines(
        &[
            "generate",
            "--json",
            "--model",
            &dir("generate"),
            "--max-new-tokens",
            "8",
            prompt,
        ],
        None,
    )[0];
    assert_eq!(got["generated_text"], g["outputs"][0][0]["generated_text"]);

    let t = expected("token_classify");
    let text = t["inputs"][0].as_str().unwrap();
    let got = &json_lines(
        &[
            "token-classify",
            "--json",
            "--model",
            &dir("token_classify"),
            text,
        ],
        None,
    )[0];
    let got: Vec<&Value> = got.as_array().unwrap().iter().map(|e| &e["word"]).collect();
    let want: Vec<&Value> = t["outputs"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["word"])
        .collect();
    assert_eq!(got, want);
}

/// A failing run: its status and stderr.
fn fails(args: &[&str], stdin: Option<&[u8]>) -> (i32, String) {
    let out = roformer(args, stdin);
    assert!(!out.status.success(), "roformer {args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !stderr.contains("panicked"),
        "roformer {args:?} panicked: {stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_input_is_a_message_not_a_panic() {
    let mlm = dir("fill_mask");
    let (_, e) = fails(
        &["fill-mask", "--model", &mlm],
        Some(b"ok [MASK]\n\xff\xfe bad\n"),
    );
    assert!(e.contains("stdin line 2: not UTF-8"), "{e}");
    let (_, e) = fails(&["fill-mask", "--model", &mlm], Some(b"ok [MASK]\n\n"));
    assert!(e.contains("input 2 (stdin line 2), \"\": empty"), "{e}");
    let (_, e) = fails(&["fill-mask", "--model", &mlm], None);
    assert!(e.contains("no texts"), "{e}");
    let (_, e) = fails(
        &["fill-mask", "--model", "/nonexistent/model", "x [MASK]"],
        None,
    );
    assert!(e.contains("not a model folder"), "{e}");
    let (_, e) = fails(&["fill-mask", "--model", &mlm, "no mask"], None);
    assert!(e.contains("no mask token"), "{e}");
    let long = "hello ".repeat(80) + "[MASK]";
    let (_, e) = fails(&["fill-mask", "--model", &mlm, &long], None);
    assert!(e.contains("maximum of 64"), "{e}");
    // asked to truncate: a warning, and an answer
    let out = roformer(
        &[
            "fill-mask",
            "--truncate",
            "--model",
            &mlm,
            &("[MASK] ".to_string() + &long),
        ],
        None,
    );
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("warning: input 1, "), "{stderr}");
    // the wrong head
    let (_, e) = fails(&["classify", "--model", &mlm, "hi"], None);
    assert!(e.contains("RoFormerForSequenceClassification"), "{e}");
    // bad arguments: clap's usage, status 2
    let (code, e) = fails(
        &["fill-mask", "--model", &mlm, "--top-k", "x", "a [MASK]"],
        None,
    );
    assert_eq!(code, 2);
    assert!(
        e.contains("invalid value 'x'") && e.contains("Usage"),
        "{e}"
    );
    let (code, _) = fails(
        &["fill-mask", "--model", &mlm, "--top-k", "0", "a [MASK]"],
        None,
    );
    assert_eq!(code, 2);
    let (code, e) = fails(&["generate", "--model", &mlm, "--seed", "3", "x"], None);
    assert_eq!(code, 2, "{e}");
}

#[test]
fn every_command_answers_help() {
    for cmd in [
        "fill-mask",
        "classify",
        "token-classify",
        "embed",
        "answer",
        "generate",
        "tokenize",
    ] {
        let out = roformer(&[cmd, "--help"], None);
        assert!(out.status.success(), "{cmd} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: roformer"));
    }
}

/// Every subcommand on `n` stdin lines, with the arguments it needs.
fn every_command(n: usize) -> Vec<(Vec<String>, String)> {
    let lines = |text: &str| format!("{text}\n").repeat(n);
    let model = |task: &str| vec!["--model".to_string(), dir(task)];
    let with = |cmd: &str, task: &str, extra: &[&str]| {
        let mut args = vec![cmd.to_string()];
        args.extend(model(task));
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    vec![
        (
            with("fill-mask", "fill_mask", &[]),
            lines("hello [MASK] world"),
        ),
        (with("classify", "classify", &[]), lines("a good day")),
        (
            with("token-classify", "token_classify", &[]),
            lines("a good day"),
        ),
        (with("embed", "embed", &[]), lines("a good day")),
        (
            with("answer", "qa", &["--question", "who"]),
            lines("a good day"),
        ),
        (
            with("generate", "generate", &["--max-new-tokens", "2"]),
            lines("the quick"),
        ),
        (with("tokenize", "classify", &[]), lines("a good day")),
    ]
}

/// A closed pipe (`roformer ... | head -1`) ends every command quietly, text and --json:
/// stdout is read for one line and closed while groups of results are still to come
/// (--max-batch 1: a group is 4 inputs, 12 inputs are 3 groups). Before, text mode panicked
/// (`failed printing to stdout: Broken pipe`, status 101) and --json failed with status 1.
#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    use std::io::BufRead;
    for (args, input) in every_command(12) {
        for json in [false, true] {
            let mut args = args.clone();
            if args[0] != "tokenize" {
                args.push("--max-batch".into());
                args.push("1".into());
            }
            if json {
                args.push("--json".into());
            }
            let mut child = roformer_command()
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
            let mut first = String::new();
            reader.read_line(&mut first).unwrap();
            assert!(!first.is_empty(), "{args:?}: no output");
            drop(reader);
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert!(!stderr.contains("error"), "{args:?}: {stderr}");
            assert!(
                out.status.success() || sigpipe(&out.status),
                "{args:?}: {:?} {stderr}",
                out.status
            );
        }
    }
}

#[cfg(unix)]
fn sigpipe(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(13)
}

#[cfg(not(unix))]
fn sigpipe(_: &std::process::ExitStatus) -> bool {
    false
}

/// A full disk is an error (status 1, a message), not a panic, text and --json. Before, text
/// mode panicked (`failed printing to stdout: No space left on device`, status 101).
#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_is_an_error() {
    for (args, input) in every_command(2) {
        for json in [false, true] {
            let mut args = args.clone();
            if json {
                args.push("--json".into());
            }
            let full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            let mut child = roformer_command()
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(full)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
            drop(pipe);
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.contains("error: writing the output: No space left"),
                "{args:?}: {stderr}"
            );
        }
    }
}

/// Huge numbers: fill-mask's --top-k is clamped to the vocabulary (before: an abort
/// allocating 64 GB, or a capacity-overflow panic); answer's --top-k near 2^63 gives every
/// answer, as a large one does (before: `2·top_k + 10` overflowed, a panic in a debug build,
/// a handful of candidates in a release one); generate's --max-new-tokens past the model's
/// length is refused up front, naming the option and the model's maximum (before: the
/// length check overflowed).
#[test]
fn huge_numbers_are_clamped_or_refused() {
    let mlm = dir("fill_mask");
    let vocab = serde_json::from_str::<Value>(
        &std::fs::read_to_string(PathBuf::from(&mlm).join("config.json")).unwrap(),
    )
    .unwrap()["vocab_size"]
        .as_u64()
        .unwrap() as usize;
    for k in ["1000000000", "18446744073709551615"] {
        let lines = json_lines(
            &[
                "fill-mask",
                "--json",
                "--model",
                &mlm,
                "--top-k",
                k,
                "a [MASK]",
            ],
            None,
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].as_array().unwrap().len(), vocab, "--top-k {k}");
    }

    let qa = dir("qa");
    let ask = |k: &str| {
        json_lines(
            &[
                "answer",
                "--json",
                "--model",
                &qa,
                "--question",
                "who jumps?",
                "--context",
                "the quick brown fox jumps over the lazy dog",
                "--top-k",
                k,
            ],
            None,
        )
    };
    let many = ask("1000");
    assert!(many[0].as_array().unwrap().len() > 10, "{many:?}");
    assert_eq!(ask("9223372036854775807"), many);

    let (code, e) = fails(
        &[
            "generate",
            "--model",
            &dir("generate"),
            "--max-new-tokens",
            "18446744073709551615",
            "the quick",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        e.contains("--max-new-tokens 18446744073709551615 leaves no room")
            && e.contains("must be below 64"),
        "{e}"
    );
}

/// `generate --truncate` cuts a long prompt from the left, leaving room for the new tokens,
/// with a warning (before: it cut the prompt to the model's 64 tokens, then refused it because
/// the new ones did not fit); without --truncate the error names --truncate.
#[test]
fn generate_truncate_leaves_room_for_the_new_tokens() {
    let model = dir("generate");
    let prompt = "hello ".repeat(80) + "the quick brown";
    let args = [
        "generate",
        "--json",
        "--truncate",
        "--model",
        &model,
        "--max-new-tokens",
        "8",
        &prompt,
    ];
    let out = roformer(&args, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: input 1, ") && stderr.contains("its start cut to leave 56"),
        "{stderr}"
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = got["generated_text"].as_str().unwrap();
    assert!(
        text.starts_with(&prompt) && text.len() > prompt.len(),
        "{text}"
    );
    let (_, e) = fails(&[&args[..2], &args[3..]].concat(), None);
    assert!(
        e.contains("with --max-new-tokens 8 more it would pass the model's maximum of 64")
            && e.contains("--truncate cuts its start"),
        "{e}"
    );
}

/// Errors name the input by its number in the whole run and its stdin line, and nothing is
/// printed before them: with --max-batch 1 a group is 4 inputs, so stdin line 7 was "input 2"
/// of the second group, after the first group's results were printed.
#[test]
fn errors_name_the_input_in_the_whole_run() {
    let mlm = dir("fill_mask");
    let good = "a [MASK] b\n".repeat(6);
    let long = "hello ".repeat(80) + "[MASK]";
    for (bad, what) in [
        (
            long.as_str(),
            "more than the model's maximum of 64 (--truncate cuts its end)",
        ),
        ("no mask here", "no mask token ([MASK])"),
    ] {
        let input = format!("{good}{bad}\na [MASK]\n");
        let out = roformer(
            &["fill-mask", "--json", "--max-batch", "1", "--model", &mlm],
            Some(input.as_bytes()),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("error: input 7 (stdin line 7), ") && stderr.contains(what),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "printed before the error");
    }
    // arguments: the input's number, counted from 1
    let (_, e) = fails(&["fill-mask", "--model", &mlm, "a [MASK]", "no mask"], None);
    assert!(
        e.contains("error: input 2, \"no mask\": no mask token"),
        "{e}"
    );
}

/// An error quotes the start of a long input, not all of it (before: a 200 kB input gave a
/// 200 kB error line).
#[test]
fn errors_quote_only_the_start_of_a_long_input() {
    let input = "a ".repeat(100_000) + "\n";
    let m = dir("fill_mask");
    for args in [
        vec!["fill-mask", "--model", &m],
        vec!["fill-mask", "--truncate", "--model", &m],
    ] {
        let (_, e) = fails(&args, Some(input.as_bytes()));
        let line = e.lines().find(|l| l.starts_with("error:")).unwrap();
        assert!(line.len() < 300, "{} bytes: {}", line.len(), &line[..300]);
        assert!(line.contains("\"… (200000 characters)"), "{line}");
    }
}

/// One rule for empty texts, said in --help: an empty or blank text is an error naming it,
/// as an argument (before: tokenize took it) or a stdin line.
#[test]
fn empty_texts_are_refused_alike_from_arguments_and_stdin() {
    let m = dir("classify");
    let (_, e) = fails(&["tokenize", "--model", &m, "a", ""], None);
    assert!(e.contains("error: input 2, \"\": empty"), "{e}");
    let (_, e) = fails(&["classify", "--model", &m, "a", "  "], None);
    assert!(e.contains("error: input 2, \"  \": empty"), "{e}");
    let (_, e) = fails(&["tokenize", "--model", &m], Some(b"a\n \nb\n"));
    assert!(
        e.contains("error: input 2 (stdin line 2), \" \": empty"),
        "{e}"
    );
    let (_, e) = fails(
        &[
            "answer",
            "--model",
            &dir("qa"),
            "--question",
            "q",
            "--context",
            "",
        ],
        None,
    );
    assert!(e.contains("--context is empty"), "{e}");
    let help = String::from_utf8(roformer(&["classify", "--help"], None).stdout).unwrap();
    assert!(help.contains("empty ones are errors"), "{help}");
    assert!(help.contains("1 to 256"), "--max-batch's range: {help}");
}

/// A folder named model.safetensors is called that (before: a missing
/// `model.safetensors/model.safetensors.index.json`).
#[test]
fn a_folder_named_model_safetensors_is_named() {
    let scratch = std::env::temp_dir().join(format!("roformer-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("model.safetensors")).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(PathBuf::from(dir("classify")).join(f), scratch.join(f)).unwrap();
    }
    let (_, e) = fails(
        &["classify", "--model", scratch.to_str().unwrap(), "hi"],
        None,
    );
    std::fs::remove_dir_all(&scratch).unwrap();
    assert!(
        e.contains("model.safetensors: a folder, where the model's weights"),
        "{e}"
    );
}

/// Text mode keeps one line per input: newlines and escape codes in a text are escaped
/// (before: printed raw, splitting the line and colouring the terminal).
#[test]
fn text_mode_escapes_control_characters() {
    let text = "a\nb\u{1b}[31m\tc";
    for (cmd, task) in [("classify", "classify"), ("tokenize", "classify")] {
        let out = roformer(&[cmd, "--model", &dir(task), text], None);
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let first = stdout.lines().next().unwrap();
        assert!(first.starts_with("a\\nb\\u{1b}[31m\\tc"), "{stdout}");
        assert!(!stdout.contains('\u{1b}'), "{stdout}");
        if cmd == "classify" {
            assert_eq!(stdout.lines().count(), 1, "{stdout}");
        }
    }
}

/// `WGPU_BACKEND` and `WGPU_POWER_PREF` values wgpu would ignore are errors naming the
/// accepted ones (`WGPU_BACKEND=bogus` used to search no backend at all and report
/// "backends tried: Backends(0x0)"; a bogus power preference was silently "high").
#[test]
fn a_bad_adapter_variable_names_the_accepted_values() {
    let run = |var: &str, value: &str| {
        let out = roformer_command()
            .args(["classify", "--model", &dir("classify"), "a text"])
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}={value}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let backend = run("WGPU_BACKEND", "bogus");
    assert!(
        backend.contains("WGPU_BACKEND=\"bogus\"") && backend.contains("vulkan (or vk)"),
        "{backend}"
    );
    assert!(!backend.contains("Backends(0x0)"), "{backend}");
    let power = run("WGPU_POWER_PREF", "fastest");
    assert!(power.contains("low, high or none"), "{power}");
}

/// `generate` takes the folder's generation_config.json (here eos_token_id 45, which ends a
/// sequence) and transformers' settings from the command line; its text is transformers'
/// ids up to the end token, decoded (tools/make_generation_fixtures.py).
#[test]
fn generate_follows_generation_config_and_the_penalty_options() {
    let dir = dir("generate_long");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(PathBuf::from(&dir).join("expected.json")).unwrap(),
    )
    .unwrap();
    let eos = expected["eos_token_id"].as_u64().unwrap();
    let case = expected["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "repetition_penalty")
        .unwrap();
    let prompt = expected["prompts"][0].as_str().unwrap();
    let ids: Vec<u64> = case["new_ids"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let until_eos = &ids[..=ids.iter().position(|&t| t == eos).unwrap()];
    let tokenizer = roformer_wgpu::text::Tokenizer::from_dir(&dir).unwrap();
    let until_eos: Vec<u32> = until_eos.iter().map(|&t| t as u32).collect();
    let want = format!("{prompt}{}", tokenizer.decode(&until_eos, true).unwrap());
    let got = json_lines(
        &[
            "generate",
            "--json",
            "--model",
            &dir,
            "--max-new-tokens",
            "40",
            "--repetition-penalty",
            "1.5",
            prompt,
        ],
        None,
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["generated_text"], want.as_str());
    let (status, e) = fails(
        &[
            "generate",
            "--model",
            &dir,
            "--repetition-penalty",
            "0",
            "a",
        ],
        None,
    );
    assert_eq!(status, 2);
    assert!(e.contains("not a number above 0"), "{e}");
}
