//! `ordo`: the command-line client. Parsing and error reporting live here; the commands live in
//! `commands/`, on top of the `ordo_client` library.

mod commands;

use std::{io::Write, process::ExitCode};

use clap::Parser;

fn main() -> ExitCode {
    let args = commands::args::Cli::parse();
    let addr = commands::normalize_addr(&args.addr);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}"), 1),
    };
    let result = runtime.block_on(commands::run(args));
    // Do not wait for background tasks (e.g. a subscription's reconnect timer).
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => match commands::fail::report(&err, &addr) {
            None => ExitCode::SUCCESS,
            Some((message, code)) => fail(&message, code),
        },
    }
}

fn fail(message: &str, code: i32) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {message}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
