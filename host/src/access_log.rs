//! `keyferry:dataplane/access-log`: what an HTTP application in a guest
//! reports of each request, for the server's access log.
//!
//! Only the application knows where requests begin and end inside the
//! plaintext, so it says; the host keeps what it says short and printable,
//! and never lets it grow without bound: these are a guest's words.

use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, Lift, Linker, Lower};

use crate::sandbox::StoreState;

const INTERFACE: &str = "keyferry:dataplane/access-log@0.1.0";

/// The most reports one guest call may leave for the host; the rest are
/// dropped. A step answers a few pipelined requests at most.
pub(crate) const MAX_PENDING: usize = 64;

/// The longest method kept, in characters.
const MAX_METHOD: usize = 32;

/// The longest target kept, in characters (nginx's default line buffer is
/// 8 KiB; a log line need not carry more than this of it).
const MAX_TARGET: usize = 2048;

/// A request an application answered, as it reported it: method and
/// target cut to a bound, control characters replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestSummary {
    /// The method (`-` if the request line did not parse).
    pub method: String,
    /// The request target as sent (`-` if it did not parse).
    pub target: String,
    /// The response status code.
    pub status: u16,
    /// Request body bytes received.
    pub received: u64,
    /// Response body bytes sent.
    pub sent: u64,
}

/// The WIT record, as the guest lowers it.
#[derive(ComponentType, Lift, Lower)]
#[component(record)]
struct WitSummary {
    method: String,
    target: String,
    status: u16,
    received: u64,
    sent: u64,
}

impl From<WitSummary> for RequestSummary {
    fn from(w: WitSummary) -> Self {
        Self {
            method: printable(&w.method, MAX_METHOD),
            target: printable(&w.target, MAX_TARGET),
            status: w.status,
            received: w.received,
            sent: w.sent,
        }
    }
}

/// `text` cut to `max` characters, control characters replaced, so a
/// guest can neither forge a log line nor make one huge.
fn printable(text: &str, max: usize) -> String {
    let text: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    if text.is_empty() { "-".into() } else { text }
}

/// Adds `keyferry:dataplane/access-log` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    let mut root = linker.root();
    let mut i = root.instance(INTERFACE)?;
    i.func_wrap(
        "answered",
        |mut cx: StoreContextMut<'_, StoreState>, (request,): (WitSummary,)| {
            let request = RequestSummary::from(request);
            let state = cx.data_mut();
            // A served wasi:http component: its transport logs it now, with
            // the time the request took.
            if let Some(http) = state.http.as_deref_mut() {
                http.answered(request);
            } else if state.answered.len() < MAX_PENDING {
                state.answered.push(request);
            }
            Ok(())
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_cut_and_made_printable() {
        let r = RequestSummary::from(WitSummary {
            method: "GET\nINFO forged".into(),
            target: "x".repeat(5000),
            status: 200,
            received: 1,
            sent: 2,
        });
        assert_eq!(r.method, "GET\u{fffd}INFO forged");
        assert_eq!(r.target.len(), MAX_TARGET);
        let empty = RequestSummary::from(WitSummary {
            method: String::new(),
            target: String::new(),
            status: 400,
            received: 0,
            sent: 0,
        });
        assert_eq!((empty.method.as_str(), empty.target.as_str()), ("-", "-"));
    }
}
