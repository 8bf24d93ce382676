//! `haven-sim`: runs simulation scenarios (see docs/scenarios.md).

fn main() {
    eprintln!("haven-sim: not yet implemented");
    std::process::exit(2);
}
