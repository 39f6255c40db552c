//! `herold-loadtest`: the scenario-driven load generator (see issue on the
//! election-Sunday load tester). Not built yet: it prints what it will be.

fn main() {
    eprintln!("herold-loadtest: scenarios are not implemented yet; see docs/architecture.md");
    std::process::exit(2);
}
