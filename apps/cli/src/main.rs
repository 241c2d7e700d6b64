//! `wtb`: the wheretobuy command line. Parses arguments, calls the libraries, prints.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod dataset;
#[allow(dead_code)] // used by the embedding and indexing subcommands
mod progress;

#[derive(Parser)]
#[command(
    name = "wtb",
    version,
    about = "wheretobuy: visual search for fashion shops (street2shop datasets, embeddings, indexes, evaluation)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, validate and clean a street2shop dataset.
    #[command(subcommand)]
    Dataset(dataset::DatasetCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Dataset(command) => dataset::run(command),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
