//! `herold-plan`: the sizing table of `docs/capacity.md`, computed from the
//! inputs file (measured costs, assumptions, the sizes and their
//! scenarios). With `--cost-runs`, the measured relay, Redis and CQL costs
//! come from `loadtest/cluster-cost.sh` runs instead of the file. With
//! `--write`, the table replaces the one in the Markdown file (between
//! `<!-- plan:begin -->` and `<!-- plan:end -->`).

use std::path::PathBuf;

use clap::Parser;
use herold_loadtest::plan::{Inputs, apply_cost_runs, table};

/// Exit code for bad input (EX_USAGE).
const EXIT_USAGE: i32 = 64;

const BEGIN: &str = "<!-- plan:begin -->";
const END: &str = "<!-- plan:end -->";

#[derive(Debug, Parser)]
#[command(name = "herold-plan", version, about = "Herold capacity model")]
struct Args {
    /// Inputs file, e.g. docs/capacity.toml.
    #[arg(default_value = "docs/capacity.toml")]
    inputs: PathBuf,
    /// Folder the scenario paths in the inputs are relative to.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// `runs.jsonl` written by `loadtest/cluster-cost.sh`: its runs with the
    /// most relays give the measured relay CPU, Redis and CQL costs.
    #[arg(long)]
    cost_runs: Option<PathBuf>,
    /// Markdown file whose table to replace (between the plan markers).
    #[arg(long)]
    write: Option<PathBuf>,
}

fn fail(code: i32, message: impl std::fmt::Display) -> ! {
    eprintln!("herold-plan: {message}");
    std::process::exit(code);
}

fn main() {
    let args = Args::parse();
    let mut inputs = Inputs::load(&args.inputs).unwrap_or_else(|e| fail(EXIT_USAGE, e));
    if let Some(path) = &args.cost_runs {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| fail(EXIT_USAGE, format!("cannot read {}: {e}", path.display())));
        match apply_cost_runs(&mut inputs.measured, &text) {
            Ok(n) => {
                let m = &inputs.measured;
                eprintln!(
                    "herold-plan: from {n} runs of {} (medians; put them into [measured]):\n\
                     relay_cpu_us_per_delivery = {:.1}\n\
                     redis_commands_per_destination = {:.2}\n\
                     redis_bytes_per_destination = {:.0}.0\n\
                     cql_ops_per_post = {:.1}",
                    path.display(),
                    m.relay_cpu_us_per_delivery,
                    m.redis_commands_per_destination,
                    m.redis_bytes_per_destination,
                    m.cql_ops_per_post,
                );
            }
            Err(e) => fail(EXIT_USAGE, format!("{}: {e}", path.display())),
        }
    }
    let t = table(&inputs, &args.root).unwrap_or_else(|e| fail(EXIT_USAGE, e));
    let Some(doc) = args.write else {
        print!("{t}");
        return;
    };
    let text = std::fs::read_to_string(&doc)
        .unwrap_or_else(|e| fail(EXIT_USAGE, format!("cannot read {}: {e}", doc.display())));
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        fail(
            EXIT_USAGE,
            format!("{} has no {BEGIN} ... {END} section", doc.display()),
        );
    };
    if e < b {
        fail(
            EXIT_USAGE,
            format!("{END} comes before {BEGIN} in {}", doc.display()),
        );
    }
    let new = format!("{}{BEGIN}\n{t}{}", &text[..b], &text[e..]);
    std::fs::write(&doc, new)
        .unwrap_or_else(|e| fail(1, format!("cannot write {}: {e}", doc.display())));
}
