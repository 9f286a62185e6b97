//! `cargo bench`: the side-by-side record throughput report (see
//! `keyferry_cli::bench`). Measured, not asserted: it prints ratios from one run.

fn main() -> anyhow::Result<()> {
    let engine = keyferry::GuestEngine::new(keyferry::SandboxConfig::default())?;
    let mut options = keyferry_cli::bench::BenchOptions::default();
    // `cargo bench -- --quick` for a smoke run.
    if std::env::args().any(|a| a == "--quick") {
        options.records = 16;
        options.rounds = 1;
    }
    let progress = keyferry_cli::charts::progress(keyferry_cli::bench::steps(&options));
    let mut report = keyferry_cli::bench::run(&engine, options, &progress)?;
    progress.finish_and_clear();
    // KEYFERRY_SOFT_AES=PATH: the guest's AES-GCM against RustCrypto's
    // with software AES too (`keyferry bench --soft-aes`).
    if let Some(path) = std::env::var_os("KEYFERRY_SOFT_AES") {
        report.soft_aes = Some(keyferry_cli::bench::soft_aes(path.as_ref(), &options)?);
    }
    println!("{report}");
    Ok(())
}
