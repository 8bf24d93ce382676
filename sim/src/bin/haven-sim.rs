//! `haven-sim`: runs simulation scenarios (see docs/scenarios.md and docs/simulation.md).
//!
//! ```text
//! haven-sim run FILE --seed N          one seed
//! haven-sim run FILE --seeds A..B      seeds A to B-1
//! haven-sim swarm --seeds A..B         VOPR-style: per seed, random configuration and faults
//! haven-sim swarm --seed N --print     the scenario script of a swarm seed
//! ```
//! Each seed prints one line (seed, pass or FAIL, trace digest); a failure also prints what
//! broke, the trace tail and the command that replays it. The exit status is 1 if any seed
//! failed, 2 on a usage or script error.

use clap::{Args, Parser, Subcommand};
use haven_sim::{quiet_panics, run_with, swarm, Outcome, Scenario};
use std::ops::Range;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "haven-sim",
    about = "Deterministic simulation of Haven (in-process level)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a scenario script.
    Run {
        file: String,
        #[command(flatten)]
        seeds: Seeds,
    },
    /// Runs swarm seeds: each draws its own configuration and fault rates.
    Swarm {
        #[command(flatten)]
        seeds: Seeds,
        /// Print each seed's scenario script instead of running it.
        #[arg(long)]
        print: bool,
    },
}

#[derive(Args)]
struct Seeds {
    /// One seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// A range of seeds, A..B (B excluded).
    #[arg(long)]
    seeds: Option<String>,
    /// Print only failing seeds and the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Print every event of the trace to stderr.
    #[arg(long, short)]
    verbose: bool,
}

impl Seeds {
    fn range(&self) -> Result<Range<u64>, String> {
        if let Some(s) = self.seed {
            return Ok(s..s + 1);
        }
        let Some(r) = &self.seeds else {
            return Ok(0..1);
        };
        let (a, b) = r
            .split_once("..")
            .ok_or_else(|| format!("--seeds {r:?}: expected A..B"))?;
        let a: u64 = a.parse().map_err(|_| format!("bad seed {a:?}"))?;
        let b: u64 = b.parse().map_err(|_| format!("bad seed {b:?}"))?;
        Ok(a..b)
    }
}

fn report(o: &Outcome, replay: &str, quiet: bool) {
    if !quiet || !o.passed() {
        println!("{}", o.line());
    }
    if let Some(f) = &o.failure {
        println!("  scenario: {}", o.scenario);
        println!("  broke: {f}");
        println!("  trace tail:");
        for l in &o.tail {
            println!("    {l}");
        }
        println!("  replay: {replay}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    quiet_panics();
    let started = Instant::now();
    let (mut runs, mut failed, mut sim_ms) = (0u64, 0u64, 0u64);
    let result: Result<(), String> = (|| {
        match &cli.cmd {
            Cmd::Run { file, seeds } => {
                let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
                let scn = Scenario::parse(&text).map_err(|e| format!("{file}: {e}"))?;
                for seed in seeds.range()? {
                    let o = run_with(&scn, seed, |c| c.verbose = seeds.verbose);
                    let replay =
                        format!("cargo run --release -p haven-sim -- run {file} --seed {seed}");
                    report(&o, &replay, seeds.quiet);
                    runs += 1;
                    sim_ms += o.sim_ms;
                    failed += u64::from(!o.passed());
                }
            }
            Cmd::Swarm { seeds, print } => {
                for seed in seeds.range()? {
                    let scn = swarm::scenario_for(seed);
                    if *print {
                        println!("# haven-sim swarm --seed {seed}\n{}", scn.to_script());
                        continue;
                    }
                    let o = run_with(&scn, seed, |c| c.verbose = seeds.verbose);
                    let replay = format!("cargo run --release -p haven-sim -- swarm --seed {seed}   (script: add --print)");
                    report(&o, &replay, seeds.quiet);
                    runs += 1;
                    sim_ms += o.sim_ms;
                    failed += u64::from(!o.passed());
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("haven-sim: {e}");
        return ExitCode::from(2);
    }
    if runs > 0 {
        let wall = started.elapsed().as_secs_f64().max(1e-9);
        println!(
            "{runs} seeds, {failed} failed, {:.1}s wall, {:.0} seeds/min, {:.0} simulated s per wall s",
            wall,
            runs as f64 * 60.0 / wall,
            sim_ms as f64 / 1000.0 / wall
        );
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
