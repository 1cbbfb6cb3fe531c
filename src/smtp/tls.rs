//! TLS for SMTP: the policy, and rustls client configurations built on ring.
//!
//! MTAs encrypt opportunistically without checking certificates (RFC 7435): a
//! certificate failure must not turn into plain text. `verify` checks against the
//! webpki roots plus an optional CA file, for relays and for MTA-STS-like policies.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsConnector;

/// When to use STARTTLS (`[smtp] tls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Encrypt when the server offers STARTTLS, without checking its certificate; send
    /// in clear text when it does not. What MTAs do.
    #[default]
    Opportunistic,
    /// Encrypt or do not send (defer); the certificate is not checked.
    Required,
    /// Encrypt and verify the certificate against the host name.
    Verify,
    /// Never encrypt.
    Disabled,
}

impl TlsPolicy {
    /// The policy as the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opportunistic => "opportunistic",
            Self::Required => "required",
            Self::Verify => "verify",
            Self::Disabled => "disabled",
        }
    }

    /// Whether a connection without TLS must not carry mail.
    pub fn requires_tls(self) -> bool {
        matches!(self, Self::Required | Self::Verify)
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or parsed.
    #[error("CA file {path}: {message}")]
    CaFile {
        /// The PEM file of extra trust roots (`smtp.ca_file`); `<inline>` for PEM text.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A server's certificate or key file could not be read or parsed.
    #[error("{path}: {message}")]
    ServerFile {
        /// The PEM file (certificate chain or private key).
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// A TLS acceptor for a listener, from a PEM certificate chain and a PEM private key.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsSetupError> {
    use rustls_pki_types::PrivateKeyDer;
    let file_error = |path: &Path, message: String| TlsSetupError::ServerFile {
        path: path.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The two connectors a session may need: one that checks certificates, one that
/// does not. Built once and shared by every session.
#[derive(Clone)]
pub struct TlsConnectors {
    verifying: TlsConnector,
    opportunistic: TlsConnector,
}

impl std::fmt::Debug for TlsConnectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnectors")
    }
}

impl TlsConnectors {
    /// Builds both connectors; `ca_file` (PEM) adds trust roots to the webpki set.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsSetupError> {
        let extra = read_ca_file(ca_file)?;
        Self::with_extra_roots_pem(&extra, ca_file.map(|p| p.display().to_string()))
    }

    /// Like [`Self::new`], but the opportunistic side checks each certificate as the
    /// verifying side would and tells `report` why it would have been refused, before
    /// going on anyway (MTA-STS `testing`: deliver as usual, record the failure).
    pub fn reporting(ca_file: Option<&Path>, report: Report) -> Result<Self, TlsSetupError> {
        let extra = read_ca_file(ca_file)?;
        let origin = ca_file.map(|p| p.display().to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = roots(&extra, origin.clone())?;
        let checker =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut connectors = Self::with_extra_roots_pem(&extra, origin)?;
        let algorithms = provider.signature_verification_algorithms;
        let reporting = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Reporting {
                checker,
                any: AnyCertificate(algorithms),
                report,
            }))
            .with_no_client_auth();
        connectors.opportunistic = TlsConnector::from(Arc::new(reporting));
        Ok(connectors)
    }

    /// Like [`Self::new`] with the extra roots given as PEM text.
    pub fn with_extra_roots_pem(pem: &[u8], origin: Option<String>) -> Result<Self, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = roots(pem, origin)?;
        let verifying = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let algorithms = provider.signature_verification_algorithms;
        let opportunistic = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
            .with_no_client_auth();
        Ok(Self {
            verifying: TlsConnector::from(Arc::new(verifying)),
            opportunistic: TlsConnector::from(Arc::new(opportunistic)),
        })
    }
}

/// Told the host name and the reason when a certificate would have been refused.
pub type Report = Arc<dyn Fn(&str, &rustls::Error) + Send + Sync>;

/// The PEM text of `smtp.ca_file`, or nothing.
fn read_ca_file(ca_file: Option<&Path>) -> Result<Vec<u8>, TlsSetupError> {
    match ca_file {
        Some(path) => std::fs::read(path).map_err(|e| TlsSetupError::CaFile {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
        None => Ok(Vec::new()),
    }
}

/// The webpki roots plus the certificates of `pem`.
fn roots(pem: &[u8], origin: Option<String>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let ca_error = |message: String| TlsSetupError::CaFile {
        path: origin.clone().unwrap_or_else(|| "<inline>".into()),
        message,
    };
    if !pem.is_empty() {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ca_error(e.to_string()))?;
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_error("no certificate found".into()));
        }
    }
    Ok(roots)
}

impl TlsConnectors {
    /// Connectors that verify with `config` whatever the policy: a DANE host's, where
    /// no TLS is accepted without its TLSA records' word.
    pub fn verifying_with(config: ClientConfig) -> Self {
        let connector = TlsConnector::from(Arc::new(config));
        Self {
            verifying: connector.clone(),
            opportunistic: connector,
        }
    }

    /// The connector for a policy: verifying for `verify`, the other one otherwise.
    pub fn for_policy(&self, policy: TlsPolicy) -> &TlsConnector {
        match policy {
            TlsPolicy::Verify => &self.verifying,
            _ => &self.opportunistic,
        }
    }
}

/// The name to present (SNI) and verify: a DNS name, or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| format!("invalid TLS server name {host:?}: {e}"))
}

/// Accepts any certificate but still checks that the handshake is signed by its key,
/// so the session is encrypted to whoever holds that key (opportunistic TLS).
#[derive(Debug)]
pub(super) struct AnyCertificate(pub(super) WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Accepts any certificate as [`AnyCertificate`] does, after checking it as the
/// verifying connector would and reporting why that one would refuse it.
struct Reporting {
    checker: Arc<WebPkiServerVerifier>,
    any: AnyCertificate,
    report: Report,
}

impl std::fmt::Debug for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporting")
    }
}

impl ServerCertVerifier for Reporting {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Err(e) = self.checker.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            (self.report)(&server_name.to_str(), &e);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.any.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.any.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_clear_errors() {
        let err = TlsConnectors::new(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = TlsConnectors::with_extra_roots_pem(b"not pem", None).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    #[test]
    fn server_names_accept_hosts_and_literals() {
        assert!(server_name("mx.example.com").is_ok());
        assert!(server_name("[127.0.0.1]").is_ok());
        assert!(server_name("::1").is_ok());
        assert!(server_name("bad name").is_err());
    }
}
