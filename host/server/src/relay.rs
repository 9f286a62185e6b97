//! A worker's standard error, relayed into the handshake process's log:
//! line by line, each tagged with the worker and its pid, so nothing a
//! worker writes can pass for a line of the handshake process.
//!
//! In text, a line becomes the message of one of this process's events.
//! In JSON, a worker's line is an object with its own fields (`ending`,
//! `peer`, ...), which log shippers and tests read as they read this
//! process's: it goes out as one object of this log, with `worker`, `pid`
//! and `relayed: true` set here.

use serde_json::{Map, Value};
use tracing::{debug, info, warn};

/// How this process and its workers write their logs
/// (`KEYFERRY_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The `KEYFERRY_LOG_FORMAT` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// The longest line of a worker's standard error relayed as one log line;
/// the rest of a longer line is cut.
const RELAYED_LINE: usize = 4096;

/// Lines a second one worker's standard error may put in the log, with as
/// many again in a burst: far above one line per connection at the rates a
/// worker serves, and a bound on what a compromised worker can write to
/// the operator's disk. Lines past it are dropped and counted.
const RELAYED_PER_SECOND: f64 = 20_000.0;

/// A token bucket of log lines.
struct Budget {
    tokens: f64,
    last: std::time::Instant,
    dropped: u64,
}

impl Budget {
    fn new() -> Self {
        Self {
            tokens: RELAYED_PER_SECOND,
            last: std::time::Instant::now(),
            dropped: 0,
        }
    }

    /// Whether one more line may go out at `now`; when lines were dropped
    /// before it, how many (once).
    fn take(&mut self, now: std::time::Instant) -> (bool, Option<u64>) {
        let refill = now.duration_since(self.last).as_secs_f64() * RELAYED_PER_SECOND;
        self.tokens = (self.tokens + refill).min(RELAYED_PER_SECOND);
        self.last = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return (false, None);
        }
        self.tokens -= 1.0;
        let dropped = std::mem::take(&mut self.dropped);
        (true, (dropped > 0).then_some(dropped))
    }
}

/// Relays a worker's standard error as this process's log lines, each
/// tagged with the worker and its pid, at the level the worker's line
/// names (info if none). Control characters are shown escaped and a line
/// is cut at [`RELAYED_LINE`] bytes, so a worker can neither forge a line
/// of this process nor make one without end. In JSON, a line that is a
/// JSON object goes out as one ([`relayed_object`]); any other line (a
/// panic message, a line cut short) is relayed as text.
pub(crate) async fn relay_stderr(
    stderr: tokio::process::ChildStderr,
    index: usize,
    pid: u32,
    format: LogFormat,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut line = Vec::new();
    let mut budget = Budget::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(RELAYED_LINE as u64);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') && line.len() >= RELAYED_LINE {
            // Skip the rest of an overlong line, a buffer at a time.
            loop {
                let Ok(buffered) = reader.fill_buf().await else {
                    return;
                };
                if buffered.is_empty() {
                    break;
                }
                match buffered.iter().position(|b| *b == b'\n') {
                    Some(end) => {
                        reader.consume(end + 1);
                        break;
                    }
                    None => {
                        let all = buffered.len();
                        reader.consume(all);
                    }
                }
            }
        }
        let (relay, dropped) = budget.take(std::time::Instant::now());
        if let Some(dropped) = dropped {
            warn!(
                worker = index,
                pid, dropped, "a worker wrote lines faster than they are relayed; dropped"
            );
        }
        if !relay {
            continue;
        }
        if format == LogFormat::Json
            && let Some((level, object)) = relayed_object(&line, index, pid)
        {
            if level_enabled(level) {
                write_line(&object);
            }
            continue;
        }
        let text = relayed_text(&line);
        // `relayed`, as on a JSON worker line: a worker's text (a panic, a
        // cut line, or a forgery) is never an event of this process.
        match worker_line_level(&text) {
            tracing::Level::ERROR => {
                tracing::error!(worker = index, pid, relayed = true, "{text}")
            }
            tracing::Level::WARN => warn!(worker = index, pid, relayed = true, "{text}"),
            tracing::Level::DEBUG => debug!(worker = index, pid, relayed = true, "{text}"),
            tracing::Level::TRACE => {
                tracing::trace!(worker = index, pid, relayed = true, "{text}")
            }
            _ => info!(worker = index, pid, relayed = true, "{text}"),
        }
    }
}

/// A worker's line as text to log: without its line end, invalid UTF-8
/// replaced, and control characters (escape sequences, carriage returns)
/// shown escaped.
fn relayed_text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    String::from_utf8_lossy(line)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() && c != '\t' {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// A worker's JSON line as one line of this log: its `timestamp` and
/// `level` first, as tracing writes them, then its own fields, and
/// `worker`, `pid` and `relayed` set here. A worker's own values for those
/// three are overwritten, and this process's events never carry
/// `relayed`, so no worker line can pass for one of them. `None` if the
/// line is not a JSON object. Written out again from the parsed value, so
/// nothing the worker wrote can start a line of its own.
fn relayed_object(line: &[u8], index: usize, pid: u32) -> Option<(tracing::Level, String)> {
    let mut object: Map<String, Value> = serde_json::from_slice(line.trim_ascii_end()).ok()?;
    let level = match object.get("level").and_then(Value::as_str) {
        Some("ERROR") => tracing::Level::ERROR,
        Some("WARN") => tracing::Level::WARN,
        Some("DEBUG") => tracing::Level::DEBUG,
        Some("TRACE") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    object.insert("level".into(), level.as_str().into());
    object.insert("worker".into(), index.into());
    object.insert("pid".into(), pid.into());
    object.insert("relayed".into(), true.into());
    let mut out = String::with_capacity(line.len() + 48);
    out.push('{');
    let first: Vec<_> = ["timestamp", "level"]
        .into_iter()
        .filter_map(|key| object.remove_entry(key))
        .collect();
    for (n, (key, value)) in first.into_iter().chain(object).enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(key).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push_str("}\n");
    Some((level, out))
}

/// Whether this process logs lines of `level` from the relay (its log
/// filter, as for the relay's text lines).
fn level_enabled(level: tracing::Level) -> bool {
    match level {
        tracing::Level::ERROR => tracing::enabled!(tracing::Level::ERROR),
        tracing::Level::WARN => tracing::enabled!(tracing::Level::WARN),
        tracing::Level::INFO => tracing::enabled!(tracing::Level::INFO),
        tracing::Level::DEBUG => tracing::enabled!(tracing::Level::DEBUG),
        _ => tracing::enabled!(tracing::Level::TRACE),
    }
}

/// One write under standard error's lock, as tracing writes its own
/// events (a formatted buffer, then one `write_all`), so lines never
/// interleave.
fn write_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// The level a worker's text log line names in its first words (the
/// worker logs as this process does), info if it names none.
fn worker_line_level(text: &str) -> tracing::Level {
    let head: String = text.chars().take(48).collect();
    [
        (" ERROR ", tracing::Level::ERROR),
        (" WARN ", tracing::Level::WARN),
        (" DEBUG ", tracing::Level::DEBUG),
        (" TRACE ", tracing::Level::TRACE),
    ]
    .into_iter()
    .find(|(word, _)| head.contains(word))
    .map_or(tracing::Level::INFO, |(_, level)| level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_budget_and_counted() {
        let mut budget = Budget::new();
        let start = budget.last;
        // Three seconds' worth of lines in one instant: the burst goes out.
        let sent = (0..3 * RELAYED_PER_SECOND as u64)
            .filter(|_| budget.take(start).0)
            .count();
        assert_eq!(sent, RELAYED_PER_SECOND as usize);
        assert_eq!(budget.dropped, 2 * RELAYED_PER_SECOND as u64);
        // A millisecond later, 20 lines' worth has come back; the first
        // says how many were dropped, once.
        let later = start + std::time::Duration::from_millis(1);
        let (relayed, dropped) = budget.take(later);
        assert!(relayed);
        assert_eq!(dropped, Some(2 * RELAYED_PER_SECOND as u64));
        assert_eq!(budget.take(later), (true, None));
    }

    #[test]
    fn a_relayed_line_cannot_pass_for_another() {
        assert_eq!(
            relayed_text(b"one\rTIME  INFO keyferry: forged\x1b[2K\n"),
            "one\\rTIME  INFO keyferry: forged\\u{1b}[2K"
        );
        assert_eq!(relayed_text(b"bad \xff utf-8"), "bad \u{fffd} utf-8");
        assert_eq!(
            worker_line_level("2026-12-06T10:19:09Z  WARN keyferry: x"),
            tracing::Level::WARN
        );
        assert_eq!(worker_line_level("no level here"), tracing::Level::INFO);
    }

    #[test]
    fn a_json_line_is_relayed_as_one_object_with_the_relay_s_tags() {
        let line = br#"{"timestamp":"2026-12-06T10:19:09.123456Z","level":"WARN","message":"connection","ending":"truncated","worker":7,"pid":1,"relayed":false,"target":"keyferry_server::transport"}"#;
        let (level, out) = relayed_object(line, 2, 4242).unwrap();
        assert_eq!(level, tracing::Level::WARN);
        assert!(out.starts_with(r#"{"timestamp":"2026-12-06T10:19:09.123456Z","level":"WARN","#));
        assert!(out.ends_with("}\n") && out.matches('\n').count() == 1);
        let object: Map<String, Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(object["ending"], "truncated");
        assert_eq!(object["target"], "keyferry_server::transport");
        // The worker's own tags are overwritten.
        assert_eq!(object["worker"], 2);
        assert_eq!(object["pid"], 4242);
        assert_eq!(object["relayed"], true);
    }

    #[test]
    fn a_line_that_is_no_json_object_is_left_to_the_text_relay() {
        for line in [
            &b"thread 'main' panicked at src/x.rs:1:1\n"[..],
            b"[1, 2]\n",
            b"{\"message\":\"cut sh",
            b"{\"message\":\"a\x01\"}",
        ] {
            assert!(relayed_object(line, 0, 1).is_none(), "{line:?}");
        }
        // A level that is not a level's name is info.
        let (level, _) = relayed_object(br#"{"level":5,"message":"x"}"#, 0, 1).unwrap();
        assert_eq!(level, tracing::Level::INFO);
    }
}
