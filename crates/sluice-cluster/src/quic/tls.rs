//! Cluster TLS for the relay: loads the node's certificate, key and the cluster CA (PEM),
//! and builds the mutual-TLS 1.3 configs of both ends (ring crypto).

use std::sync::Arc;

use quinn::TransportConfig;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sluice_core::topology::ClusterConfig;

use super::{ALPN, RelayError};

/// The loaded files.
pub(super) struct Tls {
    provider: Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn need<'a>(value: &'a str, key: &str, what: &str) -> Result<&'a str, RelayError> {
    if value.is_empty() {
        return Err(RelayError(format!(
            "cluster.{key} is empty: the QUIC relay needs {what} (README: Cluster TLS)"
        )));
    }
    Ok(value)
}

impl Tls {
    /// Reads `tls_cert`, `tls_key` and `tls_ca`; every one is required, since both ends
    /// of a relay connection authenticate.
    pub(super) fn load(cluster: &ClusterConfig) -> Result<Tls, RelayError> {
        let cert_path = need(&cluster.tls_cert, "tls_cert", "this node's certificate")?;
        let key_path = need(&cluster.tls_key, "tls_key", "this node's private key")?;
        let ca_path = need(&cluster.tls_ca, "tls_ca", "the cluster CA certificate")?;
        if cluster.tls_server_name.is_empty() {
            return Err(RelayError(
                "cluster.tls_server_name is empty: the QUIC relay checks peers against it"
                    .to_owned(),
            ));
        }
        let chain = certs(cert_path, "tls_cert")?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
            RelayError(format!(
                "cluster.tls_key {key_path}: no usable private key: {e}"
            ))
        })?;
        let mut roots = RootCertStore::empty();
        for cert in certs(ca_path, "tls_ca")? {
            roots.add(cert).map_err(|e| {
                RelayError(format!(
                    "cluster.tls_ca {ca_path}: not a usable CA certificate: {e}"
                ))
            })?;
        }
        Ok(Tls {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    /// The config of connections this node opens: presents its certificate, checks the
    /// peer's against the CA (the name is given per connection).
    pub(super) fn client_config(
        &self,
        transport: Arc<TransportConfig>,
    ) -> Result<quinn::ClientConfig, RelayError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| RelayError(format!("cluster.tls_cert/tls_key do not match: {e}")))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(tls_error)?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport);
        Ok(config)
    }

    /// The config of connections other nodes open: presents this node's certificate and
    /// requires theirs, signed by the CA.
    pub(super) fn server_config(
        &self,
        transport: Arc<TransportConfig>,
    ) -> Result<quinn::ServerConfig, RelayError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| RelayError(format!("cluster.tls_ca: {e}")))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| RelayError(format!("cluster.tls_cert/tls_key do not match: {e}")))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(tls_error)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport);
        Ok(config)
    }
}

fn certs(path: &str, key: &str) -> Result<Vec<CertificateDer<'static>>, RelayError> {
    let list = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| RelayError(format!("cluster.{key} {path}: {e}")))?;
    if list.is_empty() {
        return Err(RelayError(format!(
            "cluster.{key} {path}: no PEM certificate in the file"
        )));
    }
    Ok(list)
}

fn tls_error(e: impl std::fmt::Display) -> RelayError {
    RelayError(format!("QUIC relay TLS set-up: {e}"))
}
