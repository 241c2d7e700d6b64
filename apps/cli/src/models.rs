//! `wtb models ...`: the feature extractors and where their weights are.

use std::process::ExitCode;

use wtb_embed::{find_local_weights, input_size, weight_search_dirs, ModelKind, Preprocess};

/// Subcommands of `wtb models`.
#[derive(clap::Subcommand)]
pub enum ModelsCommand {
    /// Lists the models: name, dimension, input sizes, weight layouts, and whether weights are present.
    List,
}

pub fn run(command: ModelsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelsCommand::List => list(),
    }
}

fn list() -> anyhow::Result<ExitCode> {
    let dirs = weight_search_dirs();
    println!(
        "{:<20} {:>5}  {:<26} {:<22} weights",
        "model", "dim", "input (torchvision/squash)", "layouts"
    );
    for model in ModelKind::ALL {
        let weights = match find_local_weights(model, &dirs) {
            Some(path) => path.display().to_string(),
            None => match wtb_embed::hub_repo(model) {
                Some(repo) if cfg!(feature = "hub") => format!("missing (hub: {repo})"),
                _ => "missing".to_string(),
            },
        };
        let sizes = format!(
            "{0}x{0} / {1}x{1}",
            input_size(Preprocess::Torchvision, model),
            input_size(Preprocess::Squash, model)
        );
        println!(
            "{:<20} {:>5}  {:<26} {:<22} {weights}",
            model.name(),
            model.dim(),
            sizes,
            model.layouts().join(", ")
        );
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    println!(
        "\nsearched: {} (set WTB_MODELS_DIR to add a folder)",
        searched.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
