//! `wtb`: the wheretobuy command line. Parses arguments, calls the libraries, prints.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod dataset;
mod embed;
mod eval;
mod index;
mod models;
mod progress;
mod search;
mod train;

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
    // No doc comment: it would replace the long help written on `EvalArgs`.
    Eval(Box<eval::EvalArgs>),
    /// List the feature extractors and whether their weights are present.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Embed a folder or list of images into an embeddings file.
    Embed(Box<embed::EmbedArgs>),
    /// Print the top ImageNet classes of an image (a sanity check of a model and its weights).
    Classify(Box<embed::ClassifyArgs>),
    /// Build, update and inspect the searchable index of a shop's gallery.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Find the products of an index that look most like a photo.
    Search(Box<search::SearchArgs>),
    // No doc comment: it would replace the long help written on `TrainArgs`.
    Train(Box<train::TrainArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Dataset(command) => dataset::run(command),
        Command::Eval(args) => eval::run(*args),
        Command::Models(command) => models::run(command),
        Command::Embed(args) => embed::run_embed(*args),
        Command::Classify(args) => embed::run_classify(*args),
        Command::Index(command) => index::run(command),
        Command::Search(args) => search::run(*args),
        Command::Train(args) => train::run(*args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
