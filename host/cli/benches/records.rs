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
    // KEYFERRY_SOFT_AES=PATH: the guest's AES-GCM against RustCrypto's
    // with software AES too (`keyferry bench --soft-aes`).
    let soft_aes = std::env::var_os("KEYFERRY_SOFT_AES").map(std::path::PathBuf::from);
    let report = keyferry_cli::bench::run_with(&engine, options, soft_aes.as_deref(), &progress)?;
    progress.finish_and_clear();
    println!("{report}");
    Ok(())
}
