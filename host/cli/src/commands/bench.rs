//! `keyferry bench`: record throughput and handoff, side by side.

use std::path::PathBuf;

use crate::{bench, charts};
use anyhow::Context;
use clap::Args;
use keyferry::{GuestEngine, SandboxConfig};

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// 16 KiB records per measurement.
    #[arg(long, default_value_t = 256)]
    pub(crate) records: usize,
    /// Measurements per variant (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
    /// Where to write bench.svg (the chart) and bench.json (every figure).
    #[arg(long, value_name = "DIR", default_value = "keyferry-bench")]
    pub(crate) out: PathBuf,
    /// Also compare the guest's AES-GCM with the same record layer built
    /// natively over RustCrypto with software AES: the binary `cargo build
    /// --release` makes in host/cli/soft-aes
    /// (target/release/keyferry-soft-aes there).
    #[arg(long, value_name = "PATH")]
    pub(crate) soft_aes: Option<PathBuf>,
}

impl BenchArgs {
    pub(crate) fn execute(self) -> anyhow::Result<()> {
        let engine = GuestEngine::new(SandboxConfig::default())?;
        let options = bench::BenchOptions {
            records: self.records,
            rounds: self.rounds,
            ..Default::default()
        };
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        let progress = charts::progress(bench::steps(&options));
        let report = bench::run_with(&engine, options, self.soft_aes.as_deref(), &progress);
        progress.finish_and_clear();
        let report = report?;
        println!("{report}");
        let (chart, json) = (self.out.join("bench.svg"), self.out.join("bench.json"));
        report.chart(&chart)?;
        charts::write_json(&json, &report)?;
        println!("wrote {} and {}", chart.display(), json.display());
        Ok(())
    }
}
