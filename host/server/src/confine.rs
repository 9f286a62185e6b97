//! Confinement that does not depend on root (DESIGN section 6).
//!
//! The key holder makes itself non-dumpable ([`protect_key_holder`]), so no
//! process of its uid, a worker included, can read its memory through
//! `/proc/PID/mem`, `process_vm_readv` or `ptrace`: the kernel then asks
//! for `CAP_SYS_PTRACE`. A worker, once it has read what it needs from the
//! file system, shuts itself in ([`confine_worker`]):
//! - a Landlock ruleset with no rules: no file can be opened, no TCP port
//!   bound or connected, and no signal sent or abstract Unix socket reached
//!   outside its own domain (so not to the key holder, even under the same
//!   uid). A profiling run may keep one file writable, the perf map
//!   ([`confine_worker_writing`]);
//! - a seccomp filter (`seccompiler`) that refuses, with `EPERM`, what a
//!   worker never needs and an escaped guest would reach for: debugging and
//!   reading other processes, `execve`, file handles by number, new
//!   sockets, kernel modules, namespaces, BPF, `io_uring` (which would
//!   bypass the filter), keyrings, and signals to any process but itself.
//!
//! Started as root, a worker drops to an unprivileged user first and checks
//! the drop as OpenSSH's privsep child does: `setuid(0)` must fail and no
//! capability may be left ([`verify_dropped`]).

use std::collections::BTreeMap;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why confinement could not be set up or did not hold.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfineError {
    /// The Landlock ruleset could not be built or applied (an unsupported
    /// kernel is not this error: it is reported in [`Confinement`]).
    #[error("landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    /// The seccomp filter could not be compiled or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A privilege drop did not hold: the text says which check failed.
    #[error("privileges still held after the drop: {0}")]
    NotDropped(&'static str),
    /// A system call failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// How far a worker's confinement went on this kernel, for its log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// What Landlock enforces.
    pub landlock: LandlockLevel,
    /// The seccomp filter is installed (always, when confinement succeeds).
    pub seccomp: bool,
}

/// What Landlock enforces in a confined worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LandlockLevel {
    /// Every restriction asked for: no file, TCP, signal or abstract-socket
    /// access outside the worker.
    Full,
    /// Some (an older kernel): files are refused, newer scopes may not be.
    Partial,
    /// None: the kernel has no Landlock, or it is disabled.
    Unavailable,
}

impl LandlockLevel {
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Partial => "partial",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Makes the key holder non-dumpable, as sshd does at start: its memory is
/// then readable only with `CAP_SYS_PTRACE`, not by its own uid, and it
/// leaves no core file with the key in it.
///
/// wasmtime's pooling allocator opens `/proc/self/pagemap` on first use
/// (to reset instance memory by the pages it dirtied); a non-dumpable
/// process's `/proc/self` belongs to root, so it is opened here first.
pub fn protect_key_holder() -> std::io::Result<()> {
    let _ = wasmtime::PoolingAllocationConfig::is_pagemap_scan_available();
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Whether this process is dumpable (the key holder checks itself).
pub fn is_dumpable() -> bool {
    !matches!(
        rustix::process::dumpable_behavior(),
        Ok(rustix::process::DumpableBehavior::NotDumpable)
    )
}

/// Yama's ptrace scope (`/proc/sys/kernel/yama/ptrace_scope`), if the
/// kernel has Yama: 0 lets any process trace others of its uid, 1 only
/// descendants, 2 only with `CAP_SYS_PTRACE`, 3 none.
pub fn yama_ptrace_scope() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The Landlock ABI version this kernel offers, `None` without Landlock
/// (not built in, or disabled at boot). For the key holder's start-up log:
/// the workers apply what there is.
#[allow(
    unsafe_code,
    reason = "landlock_create_ruleset's version query has no safe wrapper outside the landlock crate's private API"
)]
pub fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag
    // the call reads and writes no memory; it returns the ABI or -1.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(version).ok().filter(|v| *v > 0)
}

/// Shuts the calling process in: Landlock, then seccomp. Call it once, in
/// a worker, after everything it reads from the file system is read and
/// before it starts any thread (Landlock binds the calling thread and the
/// threads it starts later; seccomp is synchronised across threads).
pub fn confine_worker() -> Result<Confinement, ConfineError> {
    confine_worker_writing(&[])
}

/// [`confine_worker`], except that the files in `writable`, which must
/// exist, may still be written (not read, created or truncated): a
/// profiling run's perf map (`KEYFERRY_PERF_MAP=1`), which wasmtime opens
/// after the worker is shut in, when its engine is made. A path that does
/// not exist gets no rule, so nothing more is allowed.
pub fn confine_worker_writing(
    writable: &[std::path::PathBuf],
) -> Result<Confinement, ConfineError> {
    let landlock = apply_landlock(writable)?;
    apply_seccomp()?;
    Ok(Confinement {
        landlock,
        seccomp: true,
    })
}

/// The newest Landlock ABI this build asks for; older kernels get what they
/// support (best effort), and the outcome is reported.
const LANDLOCK_ABI: ABI = ABI::V6;

fn apply_landlock(writable: &[std::path::PathBuf]) -> Result<LandlockLevel, ConfineError> {
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?
        // No other rule: nothing beneath any path is allowed.
        .add_rules(landlock::path_beneath_rules(writable, AccessFs::WriteFile))?
        .no_new_privs(true)
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockLevel::Full,
        RulesetStatus::PartiallyEnforced => LandlockLevel::Partial,
        RulesetStatus::NotEnforced => LandlockLevel::Unavailable,
    })
}

/// System calls a worker never makes, refused whatever their arguments.
const DENIED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_getfd,
    libc::SYS_pidfd_send_signal,
    libc::SYS_kcmp,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_socket,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_acct,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_personality,
    libc::SYS_tkill,
    libc::SYS_fanotify_init,
    libc::SYS_quotactl,
    libc::SYS_iopl,
    libc::SYS_ioperm,
];

/// System calls whose first argument names a process: refused unless it
/// names this one (`abort` signals itself with `tgkill`).
const SELF_ONLY: &[i64] = &[
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
];

/// The worker's seccomp filter: allow by default, `EPERM` for [`DENIED`]
/// and for [`SELF_ONLY`] aimed elsewhere.
fn worker_filter(own_pid: u32) -> Result<BpfProgram, ConfineError> {
    let seccomp = |e: seccompiler::BackendError| ConfineError::Seccomp(e.to_string());
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    for nr in SELF_ONLY {
        let elsewhere = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Ne,
            u64::from(own_pid),
        )
        .map_err(seccomp)?;
        rules.insert(
            *nr,
            vec![SeccompRule::new(vec![elsewhere]).map_err(seccomp)?],
        );
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| ConfineError::Seccomp(e.to_string()))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(seccomp)?;
    filter.try_into().map_err(seccomp)
}

fn apply_seccomp() -> Result<(), ConfineError> {
    let program = worker_filter(std::process::id())?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| ConfineError::Seccomp(e.to_string()))
}

/// Checks a drop from root as OpenSSH's `permanently_set_uid` does: going
/// back to uid 0 must fail, and the effective, permitted, inheritable and
/// ambient capability sets must be empty.
pub fn verify_dropped() -> Result<(), ConfineError> {
    if rustix::process::getuid().is_root() || rustix::process::geteuid().is_root() {
        return Err(ConfineError::NotDropped("still uid 0"));
    }
    let root = rustix::process::Uid::ROOT;
    if rustix::thread::set_thread_res_uid(root, root, root).is_ok() {
        return Err(ConfineError::NotDropped("setuid(0) succeeded"));
    }
    let sets = rustix::thread::capabilities(None).map_err(std::io::Error::from)?;
    if !sets.effective.is_empty() || !sets.permitted.is_empty() || !sets.inheritable.is_empty() {
        return Err(ConfineError::NotDropped("capabilities left"));
    }
    let status = std::fs::read_to_string("/proc/self/status")?;
    let ambient_empty = status
        .lines()
        .find_map(|l| l.strip_prefix("CapAmb:"))
        .is_some_and(|v| v.trim().bytes().all(|b| b == b'0'));
    if !ambient_empty {
        return Err(ConfineError::NotDropped("ambient capabilities left"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_machine() {
        let program = worker_filter(std::process::id()).unwrap();
        assert!(program.len() > DENIED.len(), "one check per denied call");
    }

    /// Applied in a child process (the filter and the ruleset cannot be
    /// taken off again): a confined process cannot open a file it could
    /// open before, start a program, or signal another process.
    #[test]
    fn a_confined_process_opens_no_file_and_signals_no_one() {
        if std::env::var_os("KEYFERRY_CONFINE_CHILD").is_some() {
            let outcome = confine_worker().unwrap();
            assert!(outcome.seccomp);
            let opened = std::fs::File::open("/etc/hostname");
            let exec = std::process::Command::new("/bin/true").status();
            let parent = rustix::process::getppid().unwrap();
            let signalled = rustix::process::test_kill_process(parent);
            println!(
                "landlock={} open={} exec={} signal={}",
                outcome.landlock.as_str(),
                opened.is_ok(),
                exec.is_ok(),
                signalled.is_ok()
            );
            return;
        }
        assert!(
            std::fs::File::open("/etc/hostname").is_ok(),
            "the file opens unconfined, so its refusal below means something"
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "confine::tests::a_confined_process_opens_no_file_and_signals_no_one",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KEYFERRY_CONFINE_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("exec=false"), "{text}");
        assert!(text.contains("signal=false"), "{text}");
        // What the key holder's start-up log says of this kernel is what
        // a worker gets.
        match landlock_abi() {
            None => {
                assert!(text.contains("landlock=unavailable"), "{text}");
                eprintln!("this kernel has no Landlock: file access not checked");
            }
            Some(abi) => {
                let level = if abi >= 6 {
                    "landlock=full"
                } else {
                    "landlock=partial"
                };
                assert!(text.contains(level), "ABI {abi}: {text}");
                assert!(text.contains("open=false"), "{text}");
            }
        }
    }
}
