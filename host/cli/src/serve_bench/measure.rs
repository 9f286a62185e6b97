//! What `bench-serve` measures of a server under load: requests/s from
//! wrk, and the server's CPU time and memory from /proc, its children
//! (workers, nginx's processes) included.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::Options;
use super::smaps;
use super::targets::{Target, client_config, send_get};

/// Memory of one process, KiB: (RSS, PSS) from `smaps_rollup`.
fn memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .with_context(|| format!("no {name} in smaps_rollup"))?
            .parse()
            .map_err(Into::into)
    };
    Ok((field("Rss:")?, field("Pss:")?))
}

/// A process and its descendants (nginx and keyferry run workers).
fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    // Each thread lists the children it started (keyferry's workers are
    // started from runtime threads), so read them all.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            pids.extend(tree(child));
        }
    }
    pids
}

/// (RSS, PSS) of a process and its children, KiB. PSS is what the machine
/// pays: RSS counts a page once per mapping, and a wasmtime instance maps
/// its component's memory image copy-on-write, so RSS counts the image's
/// shared pages again for every instance.
fn tree_memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let (mut rss, mut pss) = memory_kib(pid)?;
    for child in tree(pid).into_iter().skip(1) {
        let (r, p) = memory_kib(child).unwrap_or((0, 0));
        rss += r;
        pss += p;
    }
    Ok((rss, pss))
}

/// CPU time (user and system) a process and its children have used, in
/// clock ticks.
fn tree_cpu_ticks(pid: u32) -> u64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| cpu_ticks(&stat))
        .sum()
}

/// utime + stime from a `/proc/PID/stat` line: fields 14 and 15, counted
/// after the command name's closing parenthesis (the name may hold
/// spaces).
pub(super) fn cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// One wrk run against a server: requests/s, and the server's CPU µs per
/// request.
pub(super) struct Load {
    pub(super) rate: f64,
    pub(super) cpu_us_per_request: f64,
}

pub(super) fn measure(target: &Target, options: &Options, close: bool) -> anyhow::Result<Load> {
    let ticks_now = || {
        tree_cpu_ticks(target.child.id())
            + target
                .companion
                .as_ref()
                .map_or(0, |c| tree_cpu_ticks(c.id()))
    };
    let before = ticks_now();
    let (rate, requests) = wrk(target.port, options, close)?;
    let ticks = ticks_now().saturating_sub(before);
    let tick_us = 1e6 / rustix::param::clock_ticks_per_second() as f64;
    Ok(Load {
        rate,
        cpu_us_per_request: ticks as f64 * tick_us / requests.max(1) as f64,
    })
}

/// Requests/s and the number of requests wrk completed.
fn wrk(port: u16, options: &Options, close: bool) -> anyhow::Result<(f64, u64)> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "1",
        "-c",
        &options.connections.to_string(),
        "-d",
        &format!("{}s", options.duration.as_secs()),
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .context("run wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("wrk printed no Requests/sec")?
        .trim()
        .parse()?;
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .context("wrk printed no request count")?
        .0
        .parse()?;
    if text.contains("Non-2xx") || text.contains("Socket errors") && !close {
        eprintln!("wrk reported errors against port {port}:\n{text}");
    }
    Ok((rate, requests))
}

/// What an idle connection costs a server: its growth per connection.
pub(super) struct IdleMemory {
    /// Resident set size, KiB.
    pub rss: f64,
    /// Proportional set size, KiB.
    pub pss: f64,
    /// Private dirty KiB by kind of mapping, largest first.
    pub by_kind: Vec<(smaps::Kind, f64)>,
}

/// Opens `n` TLS connections that each make one request and then stay idle,
/// and returns how much the server (its children and companion included)
/// grew per connection.
pub(super) fn memory_per_connection(target: &Target, n: u32) -> anyhow::Result<IdleMemory> {
    let config = client_config()?;
    let pids = || {
        let mut pids = tree(target.child.id());
        if let Some(c) = &target.companion {
            pids.extend(tree(c.id()));
        }
        pids
    };
    let memory = || -> anyhow::Result<(u64, u64)> {
        let (rss, pss) = tree_memory_kib(target.child.id())?;
        let (crss, cpss) = match &target.companion {
            Some(c) => tree_memory_kib(c.id())?,
            None => (0, 0),
        };
        Ok((rss + crss, pss + cpss))
    };
    let kinds_before = smaps::of_processes(&pids());
    let before = memory()?;
    let mut held = Vec::new();
    for _ in 0..n {
        let mut tls = send_get(&config, "localhost", "localhost", target.port)?;
        let mut buf = [0u8; 4096];
        let _ = tls.read(&mut buf)?;
        held.push(tls);
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = memory()?;
    let kinds_after = smaps::of_processes(&pids());
    drop(held);
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / f64::from(n);
    Ok(IdleMemory {
        rss: per(after.0, before.0),
        pss: per(after.1, before.1),
        by_kind: smaps::growth(&kinds_before, &kinds_after, n),
    })
}
