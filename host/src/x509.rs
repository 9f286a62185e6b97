//! What the guest's facts say about the peer's certificate, read with a
//! maintained X.509 parser (`x509-parser`). Only the leaf rustls already
//! verified (or the server's, on a client) is read; a certificate the
//! parser refuses still gets its fingerprint.

use keyferry_record::connection::PeerCertificate;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2sn};
use x509_parser::x509::X509Name;

/// The facts of a DER leaf certificate.
pub(crate) fn peer_certificate(der: &CertificateDer<'_>) -> PeerCertificate {
    let sha256 = crate::tls::fingerprint(der);
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return PeerCertificate {
            subject: "unparsable certificate".into(),
            sha256,
            ..PeerCertificate::default()
        };
    };
    let subject_alt_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().filter_map(name).collect(),
        _ => Vec::new(),
    };
    PeerCertificate {
        subject: distinguished_name(cert.subject()),
        issuer: distinguished_name(cert.issuer()),
        serial: cert.raw_serial_as_string(),
        subject_alt_names,
        sha256,
    }
}

/// When a DER certificate expires (notAfter), in seconds since the Unix
/// epoch.
pub(crate) fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A distinguished name in RFC 4514 string form, attributes in the
/// certificate's order: values are escaped, so a common name such as
/// `alice, O=Admins` cannot pass for two attributes, and control
/// characters are written as `\XX`. A value that is not a string is
/// `#` and its DER in hex, as RFC 4514 says.
fn distinguished_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter_rdn()
        .map(|rdn| {
            let attributes: Vec<String> = rdn
                .iter()
                .map(|attr| {
                    let oid = attr.attr_type().to_id_string();
                    let kind = match oid.as_str() {
                        // RFC 4514's short names, and openssl's for email.
                        "2.5.4.3" => "CN".to_string(),
                        "2.5.4.6" => "C".to_string(),
                        "2.5.4.7" => "L".to_string(),
                        "2.5.4.8" => "ST".to_string(),
                        "2.5.4.9" => "STREET".to_string(),
                        "2.5.4.10" => "O".to_string(),
                        "2.5.4.11" => "OU".to_string(),
                        "0.9.2342.19200300.100.1.1" => "UID".to_string(),
                        "0.9.2342.19200300.100.1.25" => "DC".to_string(),
                        "1.2.840.113549.1.9.1" => "emailAddress".to_string(),
                        _ => oid2sn(attr.attr_type(), oid_registry())
                            .map(str::to_string)
                            .unwrap_or(oid),
                    };
                    let value = match attr.as_str() {
                        Ok(text) => escape(text),
                        Err(_) => {
                            let der = attr.attr_value().data;
                            format!(
                                "#{}",
                                der.iter().map(|b| format!("{b:02x}")).collect::<String>()
                            )
                        }
                    };
                    format!("{kind}={value}")
                })
                .collect();
            attributes.join("+")
        })
        .collect();
    rdns.join(", ")
}

/// RFC 4514 section 2.4 escaping, with control characters as `\XX`.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// One subject alternative name as openssl prints it; kinds plugins do not
/// use are left out.
fn name(name: &GeneralName<'_>) -> Option<String> {
    Some(match name {
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::IPAddress(ip) => match ip.len() {
            4 => format!(
                "IP:{}",
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).ok()?)
            ),
            16 => format!(
                "IP:{}",
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).ok()?)
            ),
            _ => return None,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_certificate_reads_as_openssl_prints_it() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Example CA");
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "alice.example".to_string(),
            "10.0.0.1".to_string(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params.serial_number = Some(vec![0x01, 0x02, 0xab].into());
        let cert = params.signed_by(&key, &issuer).unwrap();
        let facts = peer_certificate(cert.der());
        assert_eq!(facts.subject, "CN=alice");
        assert_eq!(facts.issuer, "CN=Example CA");
        assert_eq!(facts.serial, "01:02:ab");
        assert_eq!(
            facts.subject_alt_names,
            ["DNS:alice.example", "IP:10.0.0.1"]
        );
        assert_eq!(facts.sha256, crate::tls::fingerprint(cert.der()));
        // A value that tries to read as two attributes does not.
        let mut sneaky = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        sneaky
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice, O=Admins\n");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = sneaky.self_signed(&key).unwrap();
        assert_eq!(
            peer_certificate(cert.der()).subject,
            "CN=alice\\, O\\=Admins\\0A"
        );
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(peer_certificate(&junk).subject, "unparsable certificate");
    }
}
