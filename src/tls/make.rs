//! Certificates for people without a PKI (`raftpg tls`): a cluster CA, node
//! certificates and control client certificates, written as PEM; keys mode 0600.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::Role;

/// The CA is valid this long; rotate it before (README: "Rotating certificates").
const CA_DAYS: i64 = 3650;
/// Node and client certificates are valid this long.
const LEAF_DAYS: i64 = 1095;

/// A certificate and its key, PEM.
pub struct Made {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks behind this one.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
}

/// A new cluster CA for `cluster`.
pub fn ca(cluster: &str) -> anyhow::Result<Made> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("raftpg CA for cluster {cluster}"));
    dn.push(DnType::OrganizationName, cluster);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, CA_DAYS);
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = p.self_signed(&key).context("cannot sign the CA certificate")?;
    Ok(Made {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `name` with `role`, signed by the CA. A node's certificate also names
/// the DNS names and IP addresses its peers and clients connect to.
pub fn leaf(ca: &Made, name: &str, role: Role, dns: &[String], ips: &[IpAddr]) -> anyhow::Result<Made> {
    crate::cluster::params::check_member_name(name).map_err(|e| anyhow::anyhow!("name '{name}': {e}"))?;
    if role == Role::Node && dns.is_empty() && ips.is_empty() {
        bail!("a node certificate needs the addresses its peers connect to: give --ip ADDRESS and/or --dns NAME");
    }
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("the CA key is not a PEM private key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).context("the CA certificate is not readable PEM")?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.ou());
    p.distinguished_name = dn;
    for d in dns {
        p.subject_alt_names.push(SanType::DnsName(
            d.as_str()
                .try_into()
                .with_context(|| format!("'{d}' is not a DNS name"))?,
        ));
    }
    p.subject_alt_names.extend(ips.iter().copied().map(SanType::IpAddress));
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = match role {
        Role::Node => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        Role::Admin | Role::ReadOnly => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut p, LEAF_DAYS);
    let key = KeyPair::generate().context("cannot generate a key")?;
    let cert = p.signed_by(&key, &issuer).context("cannot sign the certificate")?;
    Ok(Made {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// `DIR/STEM.crt` and `DIR/STEM.key`.
pub fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")))
}

/// Writes a certificate (0644) and its key (0600, never through a symlink). Refuses to
/// replace existing files unless `force`: a replaced CA invalidates every certificate.
pub fn write(dir: &Path, stem: &str, made: &Made, force: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (crt, key) = paths(dir, stem);
    for p in [&crt, &key] {
        if !force && p.exists() {
            bail!("{} exists: remove it or pass --force to replace it", p.display());
        }
    }
    crate::agent::pgfiles::write_private(&key, &made.key_pem, None)?;
    std::fs::write(&crt, &made.cert_pem).with_context(|| format!("cannot write {}", crt.display()))?;
    Ok((crt, key))
}

/// Reads `DIR/ca.crt` and `DIR/ca.key`.
pub fn read_ca(dir: &Path) -> anyhow::Result<Made> {
    let (crt, key) = paths(dir, "ca");
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| {
            format!(
                "cannot read {} (make the CA first: raftpg tls ca --dir {})",
                p.display(),
                dir.display()
            )
        })
    };
    Ok(Made {
        cert_pem: read(&crt)?,
        key_pem: read(&key)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    #[test]
    fn certificates_carry_name_and_role() {
        let ca = ca("prod").unwrap();
        let n1 = leaf(
            &ca,
            "n1",
            Role::Node,
            &["db1.example".into()],
            &["10.0.0.1".parse().unwrap()],
        )
        .unwrap();
        assert_eq!(
            super::super::identity_of(&der(&n1.cert_pem)).unwrap(),
            super::super::Peer {
                name: "n1".into(),
                role: Role::Node
            }
        );
        let ro = leaf(&ca, "grafana", Role::ReadOnly, &[], &[]).unwrap();
        assert_eq!(
            super::super::identity_of(&der(&ro.cert_pem)).unwrap().role,
            Role::ReadOnly
        );
        // The CA itself has no role: it cannot be used as a client.
        assert!(super::super::identity_of(&der(&ca.cert_pem))
            .unwrap_err()
            .contains("OU"));
        let e = leaf(&ca, "n2", Role::Node, &[], &[]).err().unwrap().to_string();
        assert!(e.contains("--ip"), "{e}");
        let e = leaf(&ca, "a\"b", Role::Admin, &[], &[]).err().unwrap().to_string();
        assert!(e.contains("a\"b"), "{e}");
    }

    #[test]
    fn a_certificate_read_once_is_not_parsed_again_and_a_bad_one_is_never_kept() {
        let ca = ca("prod").unwrap();
        let certs: Vec<Vec<u8>> = (0..super::super::IDENTITIES_KEPT + 3)
            .map(|i| der(&leaf(&ca, &format!("c{i}"), Role::Admin, &[], &[]).unwrap().cert_pem))
            .collect();
        // Every certificate, twice over (the list starts again once full): each reads as itself.
        for round in 0..2 {
            for (i, d) in certs.iter().enumerate() {
                let p = super::super::cached_identity(d).unwrap();
                assert_eq!(p.name, format!("c{i}"), "round {round}");
            }
        }
        assert!(super::super::IDENTITIES.lock().unwrap().len() <= super::super::IDENTITIES_KEPT);
        let bad = der(&ca.cert_pem);
        for _ in 0..2 {
            assert!(super::super::cached_identity(&bad).unwrap_err().contains("OU"));
        }
        assert!(!super::super::IDENTITIES.lock().unwrap().iter().any(|(d, _)| *d == bad));
    }

    #[test]
    fn keys_are_private_and_files_not_replaced_by_accident() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = ca("c").unwrap();
        let (crt, key) = write(dir.path(), "ca", &ca, false).unwrap();
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(std::fs::read_to_string(&crt).unwrap().contains("BEGIN CERTIFICATE"));
        let e = write(dir.path(), "ca", &ca, false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        write(dir.path(), "ca", &ca, true).unwrap();
        let back = read_ca(dir.path()).unwrap();
        leaf(&back, "n1", Role::Node, &[], &["127.0.0.1".parse().unwrap()]).unwrap();
    }
}
