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

fn need<'a>(value: &'a str, key: &'static str, what: &'static str) -> Result<&'a str, RelayError> {
    if value.is_empty() {
        return Err(RelayError::Missing { key, what });
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
        need(
            &cluster.tls_server_name,
            "tls_server_name",
            "the name peers' certificates carry",
        )?;
        let chain = certs(cert_path, "tls_cert")?;
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| RelayError::NoKey {
            path: key_path.to_owned(),
            source,
        })?;
        let mut roots = RootCertStore::empty();
        for cert in certs(ca_path, "tls_ca")? {
            roots.add(cert).map_err(|source| RelayError::BadCa {
                path: ca_path.to_owned(),
                source,
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
            .map_err(RelayError::Tls)?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(RelayError::KeyMismatch)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls).map_err(RelayError::QuicCrypto)?;
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
                .map_err(RelayError::Verifier)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(RelayError::Tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(RelayError::KeyMismatch)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls).map_err(RelayError::QuicCrypto)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(transport);
        Ok(config)
    }
}

fn certs(path: &str, key: &'static str) -> Result<Vec<CertificateDer<'static>>, RelayError> {
    let list = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| RelayError::ReadPem {
            key,
            path: path.to_owned(),
            source,
        })?;
    if list.is_empty() {
        return Err(RelayError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(list)
}
