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
    /// An IP address family with a transport other than TCP (UDP, or an
    /// unknown one): the header does not describe a TCP client.
    #[error("PROXY header for a transport other than TCP ({0:#04x})")]
    Protocol(u8),
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
    // An IP client over anything but TCP (0x11 and 0x21) describes some
    // other connection than this one.
    if matches!(family >> 4, 0x1 | 0x2) && family & 0x0f != 0x1 {
        return Err(ProxyError::Protocol(family));
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

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), or one
/// address (`192.0.2.7`, a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

/// Why a network did not parse.
#[derive(Debug, thiserror::Error)]
#[error("not an address or CIDR network: {0:?}")]
pub struct NetworkError(String);

impl std::str::FromStr for Network {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || NetworkError(text.to_string());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| error())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(error)?,
            None => bits,
        };
        Ok(Self { address, prefix })
    }
}

impl std::fmt::Display for Network {
    /// CIDR notation, which [`Network`]'s `FromStr` reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Network {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(v4.to_bits()) << 96, 32u8),
            IpAddr::V6(v6) => (v6.to_bits(), 128u8),
        };
        let (ours, width) = bits(self.address);
        let (theirs, their_width) = bits(ip.to_canonical());
        if width != their_width {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        ours & mask == theirs & mask
    }
}

/// The load balancers whose PROXY headers are believed: a header from any
/// other peer is refused, so a client that reaches the port directly
/// cannot claim another client's address. None listed: any peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedSources(Vec<Network>);

impl TrustedSources {
    /// Headers from these networks only (none: from anyone).
    pub fn new(networks: Vec<Network>) -> Self {
        Self(networks)
    }

    /// Whether a header from `peer` is believed.
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(peer))
    }

    /// Whether any peer is believed.
    pub fn is_any(&self) -> bool {
        self.0.is_empty()
    }
}

/// PP2_TYPE_ALPN: the negotiated application protocol.
pub const PP2_TYPE_ALPN: u8 = 0x01;
/// PP2_TYPE_AUTHORITY: the host name the client asked for (SNI).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// PP2_TYPE_SSL: the client connected over TLS; sub-TLVs follow a client
/// byte and a verify word.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// PP2_SUBTYPE_SSL_VERSION: the TLS version (`TLSv1.3`).
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// PP2_SUBTYPE_SSL_CN: the client certificate's common name.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// PP2_SUBTYPE_SSL_CIPHER: the cipher suite.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;

/// A version 2 PROXY header for `client` (TCP over IPv4 or IPv6) arriving at
/// `server`; for tests and for chaining keyferry behind itself.
pub fn header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    header_with_tlvs(client, server, &[])
}

/// [`header`] with type-length-value fields after the addresses (PROXY
/// protocol 2.2), as `--forward-proxy-protocol` writes them. A value too
/// long for the header is cut to what fits.
pub fn header_with_tlvs(client: SocketAddr, server: SocketAddr, tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut h = addresses(client, server);
    for (kind, value) in tlvs {
        let room = usize::from(u16::MAX) - (h.len() - 16) - 3;
        let value = &value[..value.len().min(room)];
        h.push(*kind);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value);
    }
    let block = u16::try_from(h.len() - 16).unwrap_or(u16::MAX);
    h[14..16].copy_from_slice(&block.to_be_bytes());
    h
}

fn addresses(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
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

    #[test]
    fn networks_parse_and_contain() {
        let net: Network = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.9".parse().unwrap()),
            "v4-mapped"
        );
        assert!(!net.contains("2001:db8::1".parse().unwrap()));
        let one: Network = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6: Network = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        let all: Network = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.0/", "/8"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
        let trusted = TrustedSources::new(vec![net]);
        assert!(trusted.allows("10.1.0.1".parse().unwrap()));
        assert!(!trusted.allows("127.0.0.1".parse().unwrap()));
        assert!(TrustedSources::default().allows("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn only_tcp_clients_are_taken() {
        let mut block = vec![127, 0, 0, 1, 127, 0, 0, 1, 0x30, 0x39, 1, 187];
        assert!(matches!(parse(0x21, 0x11, &block), Ok(Proxied::Client(_))));
        assert!(matches!(
            parse(0x21, 0x12, &block),
            Err(ProxyError::Protocol(0x12))
        ));
        assert!(matches!(
            parse(0x21, 0x10, &block),
            Err(ProxyError::Protocol(0x10))
        ));
        block.resize(36, 0);
        assert!(matches!(
            parse(0x21, 0x22, &block),
            Err(ProxyError::Protocol(0x22))
        ));
        assert!(matches!(parse(0x21, 0x21, &block), Ok(Proxied::Client(_))));
        assert_eq!(parse(0x21, 0x00, &[]).unwrap(), Proxied::Local);
    }

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
    fn tlvs_follow_the_addresses_and_the_length_counts_them() {
        let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let server: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let tlvs = [
            (PP2_TYPE_ALPN, b"h2".to_vec()),
            (PP2_TYPE_AUTHORITY, b"example.com".to_vec()),
        ];
        let bytes = header_with_tlvs(client, server, &tlvs);
        assert_eq!(u16::from_be_bytes([bytes[14], bytes[15]]), 12 + 5 + 14);
        assert_eq!(&bytes[28..33], &[0x01, 0, 2, b'h', b'2']);
        assert_eq!(&bytes[33..36], &[0x02, 0, 11]);
        // keyferry's own reader takes it, TLVs and all.
        assert_eq!(read(&bytes).unwrap(), Proxied::Client(client));
        // A value too long for the header is cut to what fits.
        let huge = header_with_tlvs(client, server, &[(PP2_TYPE_AUTHORITY, vec![b'a'; 70_000])]);
        assert_eq!(huge.len(), 16 + usize::from(u16::MAX));
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
