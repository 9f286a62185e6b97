//! The HAProxy PROXY protocol, version 2: the header an L4 load balancer
//! puts before the client's bytes so the client's address survives it.
//!
//! Only the binary version 2 is accepted (the text version 1 is not). The
//! header is read exactly, never a byte past it: what follows is the
//! client's TLS ClientHello.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12-byte signature that opens every version 2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The largest address block accepted (addresses plus TLVs).
const MAX_BLOCK: usize = 1024;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The connection did not start with a version 2 signature.
    #[error("no PROXY protocol v2 header")]
    Missing,
    /// The version or command nibble is not v2 PROXY or LOCAL.
    #[error("unsupported PROXY version or command {0:#04x}")]
    Version(u8),
    /// The address block is shorter than its family needs, or too long.
    #[error("malformed PROXY address block")]
    Malformed,
    /// Reading the header failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// What a header said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxied {
    /// The balancer relayed this client.
    Client(SocketAddr),
    /// A LOCAL connection (a health check) or an address family without an
    /// IP address: use the TCP peer.
    Local,
}

/// Reads one PROXY v2 header from the front of `stream`.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Proxied, ProxyError> {
    let mut head = [0u8; 16];
    stream.read_exact(&mut head).await?;
    if head[..12] != SIGNATURE {
        return Err(ProxyError::Missing);
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if len > MAX_BLOCK {
        return Err(ProxyError::Malformed);
    }
    let mut block = vec![0u8; len];
    stream.read_exact(&mut block).await?;
    parse(head[12], head[13], &block)
}

/// Parses the version/command byte, the family/protocol byte and the
/// address block.
pub fn parse(version_command: u8, family: u8, block: &[u8]) -> Result<Proxied, ProxyError> {
    match version_command {
        0x20 => return Ok(Proxied::Local),
        0x21 => {}
        other => return Err(ProxyError::Version(other)),
    }
    let address = match family >> 4 {
        // AF_INET: source, destination, source port, destination port.
        0x1 => {
            let b = block.get(..12).ok_or(ProxyError::Malformed)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]]))
        }
        // AF_INET6.
        0x2 => {
            let b = block.get(..36).ok_or(ProxyError::Malformed)?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[..16]);
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(ip)),
                u16::from_be_bytes([b[32], b[33]]),
            )
        }
        // AF_UNSPEC or AF_UNIX: no IP address to report.
        _ => return Ok(Proxied::Local),
    };
    Ok(Proxied::Client(address))
}

/// A version 2 PROXY header for `client` (TCP over IPv4 or IPv6) arriving at
/// `server`; for tests and for chaining keyferry behind itself.
pub fn header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut h = SIGNATURE.to_vec();
    h.push(0x21);
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&s.port().to_be_bytes());
        }
        (c, s) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                IpAddr::V6(ip) => ip,
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(c).octets());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&c.port().to_be_bytes());
            h.extend_from_slice(&s.port().to_be_bytes());
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Proxied, ProxyError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut stream = bytes;
        runtime.block_on(read_header(&mut stream))
    }

    #[test]
    fn ipv4_and_ipv6_headers_round_trip_and_nothing_past_them_is_read() {
        let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let server: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let mut bytes = header(client, server);
        bytes.extend_from_slice(&[22, 3, 1]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut stream = &bytes[..];
        assert_eq!(
            runtime.block_on(read_header(&mut stream)).unwrap(),
            Proxied::Client(client)
        );
        assert_eq!(stream, &[22, 3, 1], "the ClientHello is left for TLS");

        let client6: SocketAddr = "[2001:db8::5]:1234".parse().unwrap();
        let server6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(
            read(&header(client6, server6)).unwrap(),
            Proxied::Client(client6)
        );
    }

    #[test]
    fn local_unknown_families_and_bad_headers() {
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).unwrap(), Proxied::Local);
        let mut unix = SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 0]);
        assert_eq!(read(&unix).unwrap(), Proxied::Local);

        assert!(matches!(
            read(b"GET / HTTP/1.1\r\n\r\n"),
            Err(ProxyError::Missing)
        ));
        let mut v1 = SIGNATURE.to_vec();
        v1.extend_from_slice(&[0x11, 0x11, 0, 12]);
        v1.extend_from_slice(&[0; 12]);
        assert!(matches!(read(&v1), Err(ProxyError::Version(0x11))));
        let mut short = SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(read(&short), Err(ProxyError::Malformed)));
        let mut huge = SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(read(&huge), Err(ProxyError::Malformed)));
        // Truncated anywhere: an error, never a hang or a panic.
        let full = header("1.2.3.4:5".parse().unwrap(), "5.6.7.8:9".parse().unwrap());
        for cut in 0..full.len() {
            assert!(read(&full[..cut]).is_err(), "cut at {cut}");
        }
    }
}
