//! Every scenario under sim/scenarios/ passes with a handful of seeds, and parses back from the
//! script it prints.

use haven_sim::{run, Scenario};
use std::path::PathBuf;

const SEEDS: u64 = 3;

fn scenarios() -> Vec<(PathBuf, Scenario)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sim/scenarios")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "scn"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable");
            let scn = Scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, scn)
        })
        .collect()
}

#[test]
fn the_required_scenarios_exist() {
    let names: Vec<String> = scenarios()
        .iter()
        .map(|(p, _)| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "steady",
        "ps-crash",
        "mt-crash",
        "agent-crash",
        "partition-agent-ps",
        "partition-ps-mt-long",
        "flapping",
        "mt-diskfull",
    ] {
        assert!(names.iter().any(|n| n == want), "missing scenario {want}");
    }
}

#[test]
fn scripts_round_trip() {
    for (p, scn) in scenarios() {
        let again = Scenario::parse(&scn.to_script()).expect("printed script parses");
        assert_eq!(again, scn, "{}", p.display());
    }
}

#[test]
fn every_scenario_passes() {
    let mut failed = vec![];
    for (p, scn) in scenarios() {
        for seed in 0..SEEDS {
            let o = run(&scn, seed);
            if let Some(f) = &o.failure {
                failed.push(format!(
                    "{}: {}\n  {f}\n  {}\n  replay: cargo run --release -p haven-sim -- run {} --seed {seed}",
                    p.display(),
                    o.line(),
                    o.tail.join("\n  "),
                    p.display()
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
