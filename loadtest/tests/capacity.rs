//! `docs/capacity.md` is true of its inputs: its table is what
//! `herold-plan` computes from `docs/capacity.toml` and the scenarios it
//! names. After changing a figure, run
//! `cargo run -p herold-loadtest --bin herold-plan -- --write docs/capacity.md`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure

use std::path::Path;

use herold_loadtest::plan::{Inputs, table};

#[test]
fn the_capacity_table_is_computed_from_its_inputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let inputs = Inputs::load(&root.join("docs/capacity.toml")).unwrap();
    let computed = table(&inputs, &root).unwrap();
    let doc = std::fs::read_to_string(root.join("docs/capacity.md")).unwrap();
    let begin = "<!-- plan:begin -->\n";
    let start = doc
        .find(begin)
        .expect("docs/capacity.md has the plan markers")
        + begin.len();
    let end = doc.find("<!-- plan:end -->").expect("and the end marker");
    assert_eq!(
        &doc[start..end],
        computed,
        "docs/capacity.md is out of date: run `cargo run -p herold-loadtest --bin herold-plan \
         -- --write docs/capacity.md`"
    );
    // The national row names relays, Redis masters and Scylla nodes.
    let national = computed
        .lines()
        .find(|l| l.starts_with("| national"))
        .expect("a national row");
    assert_eq!(national.matches('|').count(), 14, "{national}");
}
