//! Mutual TLS between the nodes and for the control API, and who a peer is.
//!
//! Every certificate is issued by the cluster CA (made by `raftpg tls`, or by the
//! operator's own PKI). A certificate says who holds it in its subject:
//! - `CN` is the name: a member's name for a node, a person's or tool's for a client;
//! - `OU` is the role: `node` (a member: may speak Raft, and is an admin of the control
//!   API, since a member can already propose any command), `admin`, or `read-only`
//!   (`Status`, `Watch`, `History` and server reflection only).
//!
//! A certificate without one of these roles is refused, whatever CA signed it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::Deserialize;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The `[tls]` section of a node's config: PEM files.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The cluster CA: peers and clients are accepted only with a certificate it issued.
    pub ca_file: PathBuf,
    /// This node's certificate (CN = its member name, OU = node).
    pub cert_file: PathBuf,
    /// Its private key (mode 0600).
    pub key_file: PathBuf,
}

/// What a certificate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A member of the cluster.
    Node,
    /// A control client that may change the cluster.
    Admin,
    /// A control client that may only look.
    ReadOnly,
}

impl Role {
    /// The `OU` value that carries the role.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }

    fn from_ou(ou: &str) -> Option<Role> {
        [Role::Node, Role::Admin, Role::ReadOnly]
            .into_iter()
            .find(|r| r.ou() == ou)
    }

    /// May this role call the control API's changing methods?
    pub fn is_admin(self) -> bool {
        matches!(self, Role::Node | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ou())
    }
}

/// Who is on the other end of a connection, from its verified certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub role: Role,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' ({} certificate)", self.name, self.role)
    }
}

/// Reads the name and role from a DER certificate.
pub fn identity_of(der: &[u8]) -> Result<Peer, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let subject = cert.subject();
    let one = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>, what: &str| {
        let values: Vec<String> = it.filter_map(|a| a.as_str().ok().map(str::to_string)).collect();
        match values.as_slice() {
            [v] => Ok(v.clone()),
            [] => Err(format!("the certificate's subject has no {what}")),
            _ => Err(format!("the certificate's subject has more than one {what}")),
        }
    };
    let name = one(&mut subject.iter_common_name(), "CN (the member or client name)")?;
    let ou = one(&mut subject.iter_organizational_unit(), "OU (the role)")?;
    let role = Role::from_ou(&ou).ok_or_else(|| {
        format!(
            "the certificate's OU is '{ou}'; raftpg accepts only node, admin or read-only (make one with raftpg tls)"
        )
    })?;
    Ok(Peer { name, role })
}

/// The verified client of a request on a TLS listener; `None` on a plaintext one.
pub fn peer_of<T>(req: &Request<T>) -> Result<Option<Peer>, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(None);
    };
    let leaf = certs.first().ok_or_else(|| {
        Status::unauthenticated("no client certificate: connect with a certificate from the cluster CA")
    })?;
    cached_identity(leaf).map(Some).map_err(Status::permission_denied)
}

/// Certificates already read, by their bytes: every Raft heartbeat and report carries its
/// sender's certificate, and parsing it each time was 3.5 % of an idle node's CPU profile.
/// Rustls verified the chain before the request arrived; this only reads the subject.
static IDENTITIES: std::sync::Mutex<Vec<(Vec<u8>, Peer)>> = std::sync::Mutex::new(Vec::new());
/// More distinct certificates than a cluster's members and clients: the list starts again.
const IDENTITIES_KEPT: usize = 64;

fn cached_identity(der: &[u8]) -> Result<Peer, String> {
    let mut known = IDENTITIES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = known.iter().find(|(d, _)| d.as_slice() == der) {
        return Ok(p.clone());
    }
    let peer = identity_of(der)?;
    if known.len() >= IDENTITIES_KEPT {
        known.clear();
    }
    known.push((der.to_vec(), peer.clone()));
    Ok(peer)
}

/// Refuses a control API call that needs an admin when the client is read-only, or a
/// node certificate whose member `is_member` does not know (a removed member).
pub fn require_admin<T>(req: &Request<T>, method: &str, is_member: impl Fn(&str) -> bool) -> Result<(), Status> {
    match peer_of(req)? {
        Some(p) if p.role == Role::Node && !is_member(&p.name) => {
            tracing::warn!(client = %p.name, method, "refused: a node certificate of no current member");
            Err(Status::permission_denied(format!(
                "{method} refused: '{}' has a node certificate but is not a current member",
                p.name
            )))
        }
        Some(p) if !p.role.is_admin() => {
            tracing::warn!(client = %p.name, method, "refused: a read-only certificate called a method that needs admin");
            Err(Status::permission_denied(format!(
                "{method} needs the admin role; the certificate of '{}' is read-only (make an admin one with \
                 raftpg tls client NAME --role admin)",
                p.name
            )))
        }
        _ => Ok(()),
    }
}

/// A node's loaded TLS material.
#[derive(Clone)]
pub struct Tls {
    ca: Certificate,
    identity: Identity,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// Who this node's certificate says it is.
    pub me: Peer,
}

impl Tls {
    /// Reads and checks the `[tls]` files: readable PEM, and a node certificate naming `member`.
    pub fn load(section: &TlsSection, member: &str) -> anyhow::Result<Tls> {
        let read =
            |key: &str, p: &Path| std::fs::read(p).with_context(|| format!("tls.{key}: cannot read {}", p.display()));
        let ca = read("ca_file", &section.ca_file)?;
        let cert = read("cert_file", &section.cert_file)?;
        let key = read("key_file", &section.key_file)?;
        crate::config::warn_if_readable("tls.key_file", &section.key_file);
        first_der(&ca).with_context(|| format!("tls.ca_file: {}", section.ca_file.display()))?;
        let der = first_der(&cert).with_context(|| format!("tls.cert_file: {}", section.cert_file.display()))?;
        if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
            bail!("tls.key_file: {} holds no PEM private key", section.key_file.display());
        }
        let me =
            identity_of(&der).map_err(|e| anyhow::anyhow!("tls.cert_file: {}: {e}", section.cert_file.display()))?;
        if me.role != Role::Node || me.name != member {
            bail!(
                "tls.cert_file: {} is the certificate of {me}, but this node is member '{member}': make one with \
                 raftpg tls node {member} --ip ADDRESS",
                section.cert_file.display()
            );
        }
        Ok(Tls {
            ca: Certificate::from_pem(ca),
            identity: Identity::from_pem(&cert, &key),
            cert_pem: cert,
            key_pem: key,
            me,
        })
    }

    /// The listener side: this node's certificate, and a client certificate from the CA required.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
    }

    /// A TLS acceptor with this node's certificate and no client certificate asked for:
    /// the HTTP port, whose health checks HAProxy must reach without credentials.
    pub fn http_acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        use tokio_rustls::rustls;
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .context("tls.cert_file: unreadable PEM")?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).context("tls.key_file: unreadable PEM private key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("tls: the key does not match the certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// The connecting side: the server must prove the address's name or IP with a CA
    /// certificate, and this node shows its own.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }

    /// A control client's TLS from PEM files (`raftpg ctl --cacert --cert --key`).
    pub fn client_from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> anyhow::Result<ClientTlsConfig> {
        let ca_pem = std::fs::read(ca).with_context(|| format!("--cacert: cannot read {}", ca.display()))?;
        let ca_der = first_der(&ca_pem).with_context(|| format!("--cacert: {}", ca.display()))?;
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        match (cert, key) {
            (Some(cert), Some(key)) => {
                let cert_pem =
                    std::fs::read(cert).with_context(|| format!("--cert: cannot read {}", cert.display()))?;
                let key_pem = std::fs::read(key).with_context(|| format!("--key: cannot read {}", key.display()))?;
                let der = first_der(&cert_pem).with_context(|| format!("--cert: {}", cert.display()))?;
                if !issued_by(&der, &ca_der) {
                    bail!(
                        "--cert: {} was not issued by the CA in --cacert {}: the nodes accept only client \
                         certificates from their cluster's CA",
                        cert.display(),
                        ca.display()
                    );
                }
                c = c.identity(Identity::from_pem(cert_pem, key_pem));
            }
            (None, None) => {}
            _ => bail!("--cert and --key go together (or RAFTPG_CERT and RAFTPG_KEY)"),
        }
        Ok(c)
    }
}

/// Was the certificate `der` issued (and signed) by the CA certificate `ca_der`?
fn issued_by(der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, ca))) = (
        x509_parser::parse_x509_certificate(der),
        x509_parser::parse_x509_certificate(ca_der),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// The DER bytes of the first certificate in a PEM file.
fn first_der(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| anyhow::anyhow!("not a PEM certificate ({e}); expected -----BEGIN CERTIFICATE-----"))?;
    p.parse_x509()
        .map_err(|e| anyhow::anyhow!("the PEM holds no readable X.509 certificate: {e}"))?;
    Ok(p.contents)
}

/// How a node connects to its peers: plaintext or mutual TLS, and the headers that
/// name the cluster and the sender on every Raft RPC.
#[derive(Clone)]
pub struct Transport {
    tls: Option<Arc<ClientTlsConfig>>,
    cluster: MetadataValue<tonic::metadata::Ascii>,
    member: MetadataValue<tonic::metadata::Ascii>,
    /// Long-lived channels by address, for calls made now and then (forwarding).
    channels: Arc<std::sync::Mutex<std::collections::HashMap<String, tonic::transport::Channel>>>,
}

/// Header naming the cluster a Raft RPC is meant for.
pub const CLUSTER_HEADER: &str = "raftpg-cluster";
/// Header naming the member that sent a Raft RPC.
pub const MEMBER_HEADER: &str = "raftpg-member";

impl Transport {
    pub fn new(tls: Option<&Tls>, cluster: &str, member: &str) -> anyhow::Result<Transport> {
        let header = |v: &str, what: &str| {
            MetadataValue::try_from(v).with_context(|| format!("the {what} '{v}' cannot be sent as a gRPC header"))
        };
        Ok(Transport {
            tls: tls.map(|t| Arc::new(t.client())),
            cluster: header(cluster, "cluster name")?,
            member: header(member, "member name")?,
            channels: Arc::default(),
        })
    }

    /// A plaintext transport (tests and tools that need no identity).
    pub fn plaintext(cluster: &str, member: &str) -> Transport {
        Transport::new(None, cluster, member).expect("valid names")
    }

    /// The endpoint for `addr` (host:port), https when TLS is on.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, String> {
        endpoint(addr, self.tls.as_deref())
    }

    /// A lazily connecting channel to `addr` kept for the life of the node (it reconnects by
    /// itself); callers bound each call with their own deadline.
    pub fn shared_channel(&self, addr: &str) -> Result<tonic::transport::Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = self
            .endpoint(addr)?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(std::time::Duration::from_secs(5))
            .keep_alive_timeout(std::time::Duration::from_secs(5))
            .connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Wraps a message with the cluster and sender headers.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert(CLUSTER_HEADER, self.cluster.clone());
        req.metadata_mut().insert(MEMBER_HEADER, self.member.clone());
        req
    }
}

/// An endpoint for `addr` (host:port): https with `tls`, else http.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let e = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| format!("bad address {addr}: {e}"))?;
    match tls {
        Some(t) => e
            .tls_config(t.clone())
            .map_err(|e| format!("cannot use TLS towards {addr}: {e}")),
        None => Ok(e),
    }
}

pub mod make;
pub mod pg;
