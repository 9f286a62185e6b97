//! The access log (`serve --access-log`): a line per request, as nginx's
//! `access_log` writes one. The HTTP application in the guest says which
//! request it answered, with what status and how many bytes
//! ([`keyferry::access_log`]); the host adds the client, the time the
//! request took and the connection's facts (resumed, ALPN, the client
//! certificate's subject).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use keyferry::access_log::RequestSummary;
use keyferry_record::connection::Facts;

use crate::proxy::{Network, TrustedSources};

/// Where the access log goes and whose requests it keeps quiet.
#[derive(Debug)]
pub struct AccessLog {
    /// Requests from these networks (load balancers' health checks) are
    /// logged at debug, not info.
    quiet: TrustedSources,
}

impl AccessLog {
    /// An access log that logs requests from `quiet` at debug only.
    pub fn new(quiet: Vec<Network>) -> Self {
        Self {
            quiet: TrustedSources::new(quiet),
        }
    }

    /// The log of one connection's requests.
    pub fn connection(&self, peer: &str, facts: &Facts, resumed: bool) -> ConnectionLog {
        let ip = peer
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| peer.parse::<IpAddr>());
        let quiet = ip.is_ok_and(|ip| !self.quiet.is_any() && self.quiet.allows(ip));
        ConnectionLog {
            peer: peer.to_string(),
            alpn: facts
                .alpn
                .as_ref()
                .map_or_else(|| "-".into(), |a| String::from_utf8_lossy(a).into_owned()),
            client: facts
                .peer_certificate
                .as_ref()
                .map_or_else(|| "-".into(), |c| c.subject.clone()),
            resumed,
            quiet,
        }
    }
}

/// One connection's access-log context.
#[derive(Clone, Debug)]
pub struct ConnectionLog {
    peer: String,
    alpn: String,
    client: String,
    resumed: bool,
    quiet: bool,
}

impl ConnectionLog {
    /// Logs one request that took `took` (from its first byte to its
    /// answer).
    pub fn request(&self, request: &RequestSummary, took: Duration) {
        let duration_ms = took.as_secs_f64() * 1000.0;
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "keyferry::access",
                    peer = %self.peer,
                    // As strings, which the text log quotes (logfmt) and
                    // JSON keeps as they are.
                    method = request.method.as_str(),
                    path = request.target.as_str(),
                    status = request.status,
                    bytes_in = request.received,
                    bytes_out = request.sent,
                    duration_ms = (duration_ms * 1000.0).round() / 1000.0,
                    resumed = self.resumed,
                    alpn = self.alpn.as_str(),
                    client = self.client.as_str(),
                    "request"
                )
            };
        }
        if self.quiet {
            line!(debug);
        } else {
            line!(info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            role: keyferry_record::connection::Role::Server,
            version: keyferry_record::ProtocolVersion::Tls13,
            suite: "TLS_AES_128_GCM_SHA256".into(),
            server_name: None,
            alpn: Some(b"http/1.1".to_vec()),
            peer_certificate: None,
            connection_id: 7,
        }
    }

    #[test]
    fn health_checkers_are_quiet_and_others_are_not() {
        let log = AccessLog::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(log.connection("10.1.2.3:5000", &facts(), false).quiet);
        assert!(!log.connection("192.0.2.1:5000", &facts(), false).quiet);
        let c = log.connection("192.0.2.1:5000", &facts(), true);
        assert_eq!(
            (c.alpn.as_str(), c.client.as_str(), c.resumed),
            ("http/1.1", "-", true)
        );
        // Without --quiet-from nobody is quiet.
        let all = AccessLog::new(Vec::new());
        assert!(!all.connection("10.1.2.3:5000", &facts(), false).quiet);
    }
}
