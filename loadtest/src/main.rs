//! `herold-loadtest`: runs a scenario against a relay (or cluster) and
//! writes the report. Exits with 1 if any delivery was lost, duplicated,
//! reordered or misdelivered, 64 on a bad scenario or option.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use herold_loadtest::{Scenario, Target};

/// Exit code for bad input (EX_USAGE).
const EXIT_USAGE: i32 = 64;

#[derive(Debug, Parser)]
#[command(name = "herold-loadtest", version, about = "Herold load tester")]
struct Args {
    /// Scenario file, e.g. loadtest/scenarios/election-sunday.toml.
    scenario: PathBuf,
    /// Relay QUIC address; repeat it (or separate by commas) for every relay
    /// of a cluster: devices are spread over them round robin and get the
    /// others as fallbacks.
    #[arg(
        long,
        env = "HEROLD_RELAY",
        default_value = "127.0.0.1:7300",
        value_delimiter = ','
    )]
    relay: Vec<SocketAddr>,
    /// Relay admin API URL.
    #[arg(long, env = "HEROLD_ADMIN", default_value = "http://127.0.0.1:7301")]
    admin: String,
    /// File holding the admin API bearer token.
    #[arg(long, env = "HEROLD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Relay certificate fingerprint (hex); default: the dev relay's
    /// `<data-dir>/tls/cert.sha256`.
    #[arg(long, env = "HEROLD_FINGERPRINT")]
    fingerprint: Option<String>,
    /// The dev relay's data directory, to find its fingerprint.
    #[arg(long, env = "HEROLD_DATA_DIR", default_value = "herold-data")]
    data_dir: PathBuf,
    /// Override the scenario's population scale.
    #[arg(long)]
    scale: Option<f64>,
    /// Override the scenario's rate scale.
    #[arg(long)]
    rate_scale: Option<f64>,
    /// Override the schedule length, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Where to write the report.
    #[arg(long, default_value = "loadtest-report")]
    out: PathBuf,
    /// UDP sockets shared by the simulated devices.
    #[arg(long, default_value_t = 8)]
    endpoints: usize,
    /// Concurrent admin calls and connection attempts.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// `/metrics` URL of a relay under test (repeat for a cluster): its UDP
    /// datagram and drop counters go into the report. `none` to skip.
    #[arg(
        long,
        env = "HEROLD_RELAY_METRICS",
        default_value = "http://127.0.0.1:7302/metrics"
    )]
    relay_metrics: Vec<String>,
    /// Seconds a device gives a silent relay before it reconnects to the
    /// next one (default: the SDK's, 30). Failover drills use a few seconds.
    #[arg(long)]
    client_idle_timeout: Option<f64>,
    /// When the traffic begins, write its start time (Unix milliseconds)
    /// into this file: drill scripts place their faults from it.
    #[arg(long)]
    started_file: Option<PathBuf>,
    /// When the traffic has settled, write the time (Unix milliseconds)
    /// into this file and keep the devices connected until it is removed
    /// (at most 10 s): scripts that measure the relays over the traffic
    /// alone read their counters meanwhile.
    #[arg(long)]
    settled_file: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herold-loadtest: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("herold-loadtest: {e:#}");
            let usage = e
                .downcast_ref::<herold_loadtest::scenario::ScenarioError>()
                .is_some();
            std::process::exit(if usage { EXIT_USAGE } else { 1 });
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let mut scenario = Scenario::load(&args.scenario)?;
    if let Some(s) = args.scale {
        scenario.scale = s;
    }
    if let Some(r) = args.rate_scale {
        scenario.rate_scale = r;
    }
    if let Some(d) = args.duration {
        scenario.duration_secs = d;
        scenario.phases.retain(|p| p.from_secs < d);
    }
    scenario.validate()?;
    let fp_text = match &args.fingerprint {
        Some(f) => f.clone(),
        None => {
            let p = args.data_dir.join("tls").join("cert.sha256");
            std::fs::read_to_string(&p)
                .with_context(|| format!("no --fingerprint and cannot read {}", p.display()))?
        }
    };
    let fingerprint =
        herold_client::tls::parse_fingerprint(&fp_text).map_err(anyhow::Error::msg)?;
    let admin_token = match &args.admin_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let report = herold_loadtest::run(
        scenario,
        Target {
            relays: args.relay,
            fingerprint,
            admin: args.admin,
            admin_token,
            endpoints: args.endpoints,
            concurrency: args.concurrency,
            progress: !args.quiet,
            relay_metrics: args
                .relay_metrics
                .into_iter()
                .filter(|u| u != "none")
                .collect(),
            client_idle_timeout: args
                .client_idle_timeout
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(std::time::Duration::from_secs_f64),
            started_file: args.started_file,
            settled_file: args.settled_file,
        },
    )
    .await?;
    let files = report.write(&args.out)?;
    println!("{}", report.markdown());
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(report.verification.is_clean())
}
