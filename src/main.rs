//! The binary's edge: parse arguments, run a command, map the outcome to an
//! exit code (0 ok, 1 operation failed, 2 invalid input or usage).

use std::process::ExitCode;

use clap::Parser;
use stagectl::cli::{Cli, Command};
use stagectl::error::{is_input_error, EXIT_FAILED, EXIT_INPUT};
use stagectl::style::Stream;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`stagectl status | head`) instead of
    // panicking inside println!, as Unix tools do.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap exits 2 for usage errors and 0 for --help/--version.
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    stagectl::style::init(cli.color);
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "stagectl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    // The agents wait on I/O almost always: one thread keeps them small.
    // The CLI works on many hosts at once: a thread per core.
    let mut builder = match cli.command {
        Command::Agent(_) | Command::DemoHttp { .. } | Command::DemoMigrate { .. } => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(stagectl::commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            if is_input_error(&err) {
                // Topology errors arrive rendered (file:line:col, snippet).
                let text = format!("{err:#}");
                if let Some(rest) = text.strip_prefix("error:") {
                    eprintln!("{}{rest}", Stream::Stderr.bad("error:"));
                } else {
                    eprintln!("{} {text}", Stream::Stderr.bad("error:"));
                }
                ExitCode::from(EXIT_INPUT)
            } else {
                eprintln!("{} {err:#}", Stream::Stderr.bad("error:"));
                ExitCode::from(EXIT_FAILED)
            }
        }
    }
}
