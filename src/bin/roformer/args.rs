//! Command-line parsing: clap, with the usage of the (sub)command printed under any argument
//! error. (The examples have the same in `roformer_lab::args`: the library's binary cannot
//! depend on the examples' crate, which depends on the library.)

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

/// A program's exit: 0, or 1 after printing the error (as `error: ...`, not its Debug form).
/// (`verify` has exit codes of its own.)
pub fn exit_code(result: Result<(), Box<dyn std::error::Error>>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr cannot be written (`2> /dev/full`).
            let _ = writeln!(std::io::stderr(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the arguments; on `--help`/`--version` prints and exits 0, on a bad argument
/// prints clap's message and the usage and exits 2.
pub fn parse_args<T: Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let rendered = e.render().to_string();
            let mut stderr = std::io::stderr();
            let _ = write!(stderr, "{rendered}");
            if !rendered.contains("Usage:") {
                let mut cmd = T::command();
                cmd.build();
                // The usage of the subcommand named on the command line, else the program's.
                let named = std::env::args()
                    .skip(1)
                    .find_map(|a| cmd.get_subcommands().find(|s| s.get_name() == a).cloned());
                let usage = match named {
                    Some(mut sub) => sub.render_usage(),
                    None => cmd.render_usage(),
                };
                let _ = writeln!(stderr, "\n{usage}");
            }
            std::process::exit(2)
        }
    }
}
