//! What the guest's facts say about the peer's certificate, read with a
//! maintained X.509 parser (`x509-parser`). Only the leaf rustls already
//! verified (or the server's, on a client) is read; a certificate the
//! parser refuses still gets its fingerprint.

use keyferry_guest::connection::PeerCertificate;
use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

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
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        subject_alt_names,
        sha256,
    }
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
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert_eq!(peer_certificate(&junk).subject, "unparsable certificate");
    }
}
