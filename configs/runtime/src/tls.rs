//! Mutual TLS 1.3 for the sampler → collector QUIC link: server and client
//! configurations from PEM files, and a development PKI (rcgen) for demos
//! and tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use configs::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of the batch protocol; a peer speaking anything else is
/// refused during the handshake.
pub use wire_format::BATCH_ALPN as ALPN;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("{what} {}: {message}; generate development certificates with `flowmesh-collector dev-certs --out DIR`", .path.display())]
    File {
        /// Which file it is ("CA certificate", …).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The certificates or key were refused by rustls.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A verifier could not be built from the CA.
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// QUIC refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// Certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing generated files failed.
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs("CA certificate", path)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The collector's QUIC server configuration: TLS 1.3 only, its certificate
/// from `files`, and only clients whose certificate `files.ca` signed.
pub fn server_config(files: &TlsFiles) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("certificate", &files.cert)?, key(&files.key)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// A sampler's QUIC client configuration: TLS 1.3 only, its client
/// certificate from `files`, trusting only servers `files.ca` signed.
pub fn client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(certs("certificate", &files.cert)?, key(&files.key)?)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// The certificate a peer presented, as the handshake verified it (signed by
/// the configured CA). Its identity is the DNS names it carries as subject
/// alternative names, matched as TLS matches a server's name: ignoring ASCII
/// case, a wildcard name (`*.dc1`) matching one label in its place. The
/// subject's common name is not an identity.
#[derive(Debug, Clone)]
pub struct PeerCertificate(CertificateDer<'static>);

impl PeerCertificate {
    /// The end-entity certificate `connection`'s peer presented; `None`
    /// when it presented none.
    pub fn of(connection: &quinn::Connection) -> Option<PeerCertificate> {
        let chain = connection
            .peer_identity()?
            .downcast::<Vec<CertificateDer<'static>>>()
            .ok()?;
        chain.into_iter().next().map(PeerCertificate)
    }

    /// The names of `names` this certificate is valid for, in their order:
    /// the certificate is parsed once, however many names are asked about.
    /// Names that are not DNS names or IP addresses match nothing, as does
    /// every name when the certificate does not parse.
    pub fn names_among<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> Vec<&'n str> {
        let Ok(parsed) = rustls::server::ParsedCertificate::try_from(&self.0) else {
            return Vec::new();
        };
        names
            .into_iter()
            .filter(|name| {
                rustls::pki_types::ServerName::try_from(*name)
                    .is_ok_and(|server_name| rustls::client::verify_server_name(&parsed, &server_name).is_ok())
            })
            .collect()
    }

    /// Whether this certificate is valid for `name` (see
    /// [`PeerCertificate::names_among`]).
    pub fn is_named(&self, name: &str) -> bool {
        !self.names_among([name]).is_empty()
    }
}

/// Whether `name` can be a certificate's identity: a DNS name or an IP
/// address, as [`PeerCertificate::is_named`] matches it.
pub fn is_certificate_name(name: &str) -> bool {
    rustls::pki_types::ServerName::try_from(name).is_ok()
}

/// Generated development certificates: a CA, the collector's server
/// certificate and one client certificate per sampler, in one directory.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// Directory holding the files.
    pub dir: PathBuf,
}

impl DevPki {
    /// Writes `ca.pem`, `collector.pem`/`.key` (valid for `server_names`) and
    /// `<sampler>.pem`/`.key` for each sampler name into `dir`, creating it.
    /// The CA's key is not kept: re-run to issue more certificates.
    pub fn generate(dir: &Path, server_names: &[String], samplers: &[String]) -> Result<DevPki, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "flowmesh development CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let pki = DevPki { dir: dir.to_path_buf() };
        pki.write("ca.pem", &ca_cert.pem())?;

        let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| -> Result<(), TlsError> {
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            pki.write(&format!("{name}.pem"), &cert.pem())?;
            pki.write(&format!("{name}.key"), &key.serialize_pem())
        };
        leaf("collector", server_names.to_vec(), ExtendedKeyUsagePurpose::ServerAuth)?;
        for sampler in samplers {
            leaf(sampler, vec![sampler.clone()], ExtendedKeyUsagePurpose::ClientAuth)?;
        }
        Ok(pki)
    }

    fn write(&self, name: &str, contents: &str) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.dir.join(name);
        // Private keys are readable by their owner and group: the service
        // user reads them through the `flowmesh` group (deploy/tmpfiles.d
        // makes /etc/flowmesh/tls set-group-id), never by others. The mode
        // is set on an existing file too: `mode` applies only on creation.
        let mode = if name.ends_with(".key") { 0o640 } else { 0o644 };
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut file| {
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                file.write_all(contents.as_bytes())
            })
            .map_err(|source| TlsError::Write { path, source })
    }

    /// The files for the collector.
    pub fn collector(&self) -> TlsFiles {
        self.files("collector")
    }

    /// The files for sampler `name`.
    pub fn sampler(&self, name: &str) -> TlsFiles {
        self.files(name)
    }

    fn files(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.dir.join("ca.pem"),
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails

    use super::*;

    #[test]
    fn a_development_sampler_certificate_is_named_after_its_sampler() {
        // No tempfile here: a directory of this process's own, removed at the end.
        let dir = std::env::temp_dir().join(format!("flowmesh-tls-test-{}", std::process::id()));
        let pki = DevPki::generate(&dir, &["localhost".into()], &["rack1".into(), "rack2".into()]).unwrap();
        let cert = |name: &str| PeerCertificate(certs("certificate", &pki.sampler(name).cert).unwrap().remove(0));
        let rack1 = cert("rack1");
        assert!(rack1.is_named("rack1"));
        assert!(rack1.is_named("RACK1"), "DNS names ignore case");
        assert!(!rack1.is_named("rack2"));
        assert!(!rack1.is_named("rack"));
        assert!(!rack1.is_named("not a name"));
        assert_eq!(
            rack1.names_among(["rack2", "rack1", "localhost", "bad name"]),
            ["rack1"]
        );
        assert_eq!(cert("rack2").names_among(["rack1", "rack2"]), ["rack2"]);
        // The collector's certificate names are its own, not a sampler's.
        let collector = PeerCertificate(certs("certificate", &pki.collector().cert).unwrap().remove(0));
        assert_eq!(collector.names_among(["rack1", "localhost"]), ["localhost"]);
        assert!(is_certificate_name("sampler-a.dc1") && !is_certificate_name("rack 1") && !is_certificate_name(""));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Keys are group-readable (the service group reads them), never
    /// world-readable, also when `dev-certs` runs again over older keys.
    #[test]
    fn development_keys_are_readable_by_owner_and_group_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("flowmesh-tls-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("rack1.key");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        DevPki::generate(&dir, &["localhost".into()], &["rack1".into()]).unwrap();
        let mode = |name: &str| std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("rack1.key"), 0o640);
        assert_eq!(mode("collector.key"), 0o640);
        assert_eq!(mode("collector.pem"), 0o644);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
