//! `herold-loadtest`: runs a scenario against a relay (or cluster) and
//! writes the report. Exits with 1 if any delivery was lost, duplicated,
//! reordered or misdelivered, 64 on a bad scenario or option.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use herold_loadtest::slice::{Slice, SliceData, merge};
use herold_loadtest::{Report, Scenario, Target};

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
    /// Run only slice k of n of the population (`2/5`): several load
    /// generators, each with its slice and the same `--run-id`, run one
    /// scenario together; `--merge` their reports for the verdict.
    #[arg(long, value_parser = Slice::parse, default_value = "1/1")]
    slice: Slice,
    /// The run's id (8 hex digits), the same for all its slices; default:
    /// a random one.
    #[arg(long, value_parser = parse_run_id)]
    run_id: Option<u32>,
    /// Start the schedule at this time (Unix milliseconds), so that the
    /// slices start together; default: once every device is connected.
    #[arg(long)]
    start_at: Option<u64>,
    /// Merge the JSON reports of a sliced run's slices into one verdict
    /// (the scenario and its options as the slices ran it); runs nothing.
    #[arg(long, num_args = 1..)]
    merge: Vec<PathBuf>,
}

fn parse_run_id(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 16).map_err(|_| format!("a run id is up to 8 hex digits, not {s:?}"))
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
    if !args.merge.is_empty() {
        return merge_reports(&scenario, &args.merge);
    }
    if !args.slice.is_whole() && args.run_id.is_none() {
        anyhow::bail!(
            "--slice {}/{} needs --run-id: every slice of a run must use the same one",
            args.slice.index,
            args.slice.count
        );
    }
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
            slice: args.slice,
            run_id: args.run_id,
            start_at_unix_ms: args.start_at,
        },
    )
    .await?;
    let files = report.write(&args.out)?;
    println!("{}", report.markdown());
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(report.slice.is_some() || report.verification.is_clean())
}

/// `--merge`: the verdict over every slice's report.
fn merge_reports(scenario: &Scenario, paths: &[PathBuf]) -> anyhow::Result<bool> {
    let mut slices: Vec<SliceData> = Vec::new();
    let mut scenario = scenario.clone();
    for p in paths {
        let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        let report: Report = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a load test report", p.display()))?;
        // The world as the slices built it.
        scenario.scale = report.scale;
        let data = report
            .slice
            .with_context(|| format!("{} is not the report of a slice", p.display()))?;
        slices.push(data);
    }
    let v = merge(&scenario, &slices)?;
    let verdict = if v.is_clean() { "PASS" } else { "FAIL" };
    println!(
        "Verdict over {} slices: {verdict} (expected {}, delivered {}, lost {}, duplicated {}, \
         reordered {}, misdelivered {}, order conflicts {})",
        slices.len(),
        v.expected,
        v.delivered,
        v.lost,
        v.duplicated,
        v.reordered,
        v.misdelivered,
        v.order_conflicts
    );
    Ok(v.is_clean())
}
