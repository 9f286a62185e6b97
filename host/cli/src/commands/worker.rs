//! `keyferry worker`: a data-plane worker, started by `serve` (not for
//! people).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use keyferry::GuestEngine;
use tracing::{info, warn};

use super::args::{PlaneArgs, pool_slots};

/// A data-plane worker (started by `serve --workers N`; not for people).
#[derive(Args)]
pub(crate) struct WorkerArgs {
    /// Drop to this user id when started as root.
    #[arg(long, requires = "gid")]
    pub(crate) uid: Option<u32>,
    /// Drop to this group id when started as root.
    #[arg(long, requires = "uid")]
    pub(crate) gid: Option<u32>,
    /// Connections this worker may hold (sizes its instance pool).
    #[arg(long, default_value_t = 512)]
    pub(crate) max_connections: usize,
    /// Files the worker must not be able to open once confined (serve
    /// passes its private keys and ticket keys): each is tried, and a file
    /// that opens under a full Landlock ruleset stops the worker.
    #[arg(long, value_name = "FILE")]
    pub(crate) check_unreadable: Vec<PathBuf>,
    /// Check, and exit: load the guest as a worker would (confined, as the
    /// worker's user), make one instance, and exit 0, or exit 1 saying why.
    /// `serve` runs this before it listens.
    #[arg(long)]
    pub(crate) check: bool,
    #[command(flatten)]
    pub(crate) plane: PlaneArgs,
}

/// `KEYFERRY_PERF_MAP=1` has wasmtime name the guest's compiled functions
/// for `perf` in `/tmp/perf-PID.map`. A confined worker may create no
/// file, so it is made here, as the worker's user, and stays writable
/// (that file alone) once Landlock is on.
fn perf_map() -> anyhow::Result<Vec<PathBuf>> {
    if std::env::var_os("KEYFERRY_PERF_MAP").is_none_or(|v| v != "1") {
        return Ok(Vec::new());
    }
    let path = PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()));
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| {
            format!(
                "creating the perf map {} (KEYFERRY_PERF_MAP=1)",
                path.display()
            )
        })?;
    Ok(vec![path])
}

/// `keyferry worker`: harden first, while this is the only thread, then
/// serve what the handshake process hands over on standard input.
pub(crate) fn worker_command(args: WorkerArgs) -> anyhow::Result<()> {
    use std::os::fd::AsFd;
    keyferry_server::worker::harden(args.uid.zip(args.gid))?;
    keyferry_server::worker::limit_descriptors(args.max_connections)?;
    let channel = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .context("the channel on standard input")?;
    // The guest is the one file a worker reads; after it, no file opens
    // (Landlock), and what an escaped guest would reach for is refused
    // (seccomp). Before the engine, whose compiler starts threads.
    let wasm = args.plane.guest_bytes()?;
    let writable = perf_map()?;
    let confinement = keyferry_server::confine::confine_worker_writing(&writable)
        .map_err(keyferry_server::worker::WorkerError::from)?;
    info!(
        landlock = confinement.landlock.as_str(),
        seccomp = confinement.seccomp,
        uid = rustix::process::getuid().as_raw(),
        "worker confined"
    );
    check_unreadable(&args.check_unreadable, confinement.landlock)?;
    let engine = GuestEngine::new(
        args.plane
            .sandbox
            .config()
            .with_pooling(pool_slots(args.max_connections)),
    )?;
    let component = args.plane.component_from(&engine, wasm.as_deref())?;
    if args.check {
        component
            .instantiate()
            .context("making an instance of the guest")?;
        return Ok(());
    }
    let mut options = keyferry_server::worker::WorkerOptions::new(component)
        .with_timeouts(args.plane.timeouts(10))
        .with_drain_timeout(Duration::from_secs(args.plane.drain_timeout));
    if let Some(log) = args.plane.access_log() {
        options = options.with_access_log(log);
    }
    // One runtime thread: there is a worker process per core already, so
    // more threads would only hand connections' wakeups from one to
    // another. Multi-threaded all the same, so a guest call that computes
    // for long can leave the thread to the other connections
    // (`transport::guest_call`).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    // Ctrl-C and a hangup reach the whole process group, and systemd's
    // default stop sends SIGTERM to every process of the service: the
    // handshake process tells workers when to stop (they then close their
    // sessions with close_notify) and reloads what it holds, so a worker
    // ignores all three itself.
    runtime.block_on(async move {
        tokio::spawn(async {
            loop {
                if tokio::signal::ctrl_c().await.is_err() {
                    break;
                }
            }
        });
        use tokio::signal::unix::{SignalKind, signal};
        for kind in [SignalKind::hangup(), SignalKind::terminate()] {
            if let Ok(mut ignored) = signal(kind) {
                tokio::spawn(async move { while ignored.recv().await.is_some() {} });
            }
        }
        // On the runtime's thread, with the sessions it spawns, rather than
        // on this one: a hand-over then wakes no other thread.
        tokio::spawn(keyferry_server::worker::run(channel, options)).await
    })??;
    Ok(())
}

/// Tries to open each of the key holder's secret files from the confined
/// worker, as OpenSSH's privsep child tries `setuid(0)` after its drop: a
/// confinement that should hold and does not is an error, not a warning.
pub(crate) fn check_unreadable(
    files: &[PathBuf],
    landlock: keyferry_server::confine::LandlockLevel,
) -> anyhow::Result<()> {
    for file in files {
        match std::fs::File::open(file) {
            Err(e) => {
                info!(file = %file.display(), error = %e, "worker cannot open the key holder's file")
            }
            Ok(_) if landlock == keyferry_server::confine::LandlockLevel::Full => {
                bail!(
                    "confinement did not hold: the worker opened {}",
                    file.display()
                )
            }
            Ok(_) => warn!(
                file = %file.display(),
                landlock = landlock.as_str(),
                "the worker can open the key holder's file: this kernel's Landlock does not keep it out"
            ),
        }
    }
    Ok(())
}
