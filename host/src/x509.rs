//! Just enough DER to print a certificate's subject for the guest's
//! connection facts ("CN=client, O=Example"). Anything unexpected yields
//! `None`; nothing here trusts a length it has not checked.

/// The subject distinguished name of a DER certificate, RFC 4514 style
/// for the common attributes.
pub(crate) fn subject(cert: &[u8]) -> Option<String> {
    let (cert, _) = sequence(cert)?;
    let (mut tbs, _) = sequence(cert)?;
    // [0] EXPLICIT version, optional.
    if tbs.first() == Some(&0xa0) {
        let (_, rest) = element(tbs)?;
        tbs = rest;
    }
    let (_, rest) = element(tbs)?; // serialNumber
    let (_, rest) = element(rest)?; // signature AlgorithmIdentifier
    let (_, rest) = element(rest)?; // issuer
    let (_, rest) = element(rest)?; // validity
    let (name, _) = sequence(rest)?; // subject
    let mut parts = Vec::new();
    let mut rdns = name;
    while !rdns.is_empty() {
        let (tag, set, rest) = tagged(rdns)?;
        if tag != 0x31 {
            return None;
        }
        rdns = rest;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (attr, rest) = sequence(attrs)?;
            attrs = rest;
            let (tag, oid, rest) = tagged(attr)?;
            if tag != 0x06 {
                return None;
            }
            let (_, value, _) = tagged(rest)?;
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x08] => "ST".to_string(),
                [0x55, 0x04, 0x0a] => "O".to_string(),
                [0x55, 0x04, 0x0b] => "OU".to_string(),
                other => format!(
                    "OID.{}",
                    other.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            };
            let value: String = String::from_utf8_lossy(value)
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            parts.push(format!("{label}={value}"));
        }
    }
    Some(parts.join(", "))
}

/// (tag, contents, rest)
fn tagged(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let first = *der.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 3 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *der.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    if der.len() < end {
        return None;
    }
    Some((tag, &der[header..end], &der[end..]))
}

fn element(der: &[u8]) -> Option<(&[u8], &[u8])> {
    tagged(der).map(|(_, contents, rest)| (contents, rest))
}

fn sequence(der: &[u8]) -> Option<(&[u8], &[u8])> {
    match tagged(der)? {
        (0x30, contents, rest) => Some((contents, rest)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn subject_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["client.test".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "client.test");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Keyferry Tests");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            super::subject(cert.der()).unwrap(),
            "CN=client.test, O=Keyferry Tests"
        );
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for bytes in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 1, 2, 3, 4],
            &[0x30, 0x05, 0x30, 0x03, 0x02, 0x01],
        ] {
            assert_eq!(super::subject(bytes), None);
        }
    }
}
