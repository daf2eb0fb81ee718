use std::process::ExitCode;

use clap::Parser;
use vnic::cli::{Cli, Command};
use vnic::{control, daemon};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => daemon::serve(args),
        Command::Stats(args) => {
            let path = args.control.unwrap_or_else(control::default_path);
            control::query_stats(&path).and_then(|snap| {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&snap)?);
                } else {
                    print!("{}", snap.render_table());
                }
                Ok(())
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vnic: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
