//! `--tls`: viewers over TLS (RTMPS, HTTPS-FLV), with rustls' sans-IO client on each viewer's
//! own socket. The lean readers go on reading ciphertext into the thread's one scratch buffer
//! (with the kernel's receive timestamps) and [`Session::decrypt`] hands the plaintext, from a
//! second shared buffer, to the same protocol code as without TLS; a viewer adds rustls'
//! connection state, not a task or a buffer of its own.
//!
//! The server's certificate is accepted whoever it names and whoever signed it (its handshake
//! signature is still verified): the generator measures what TLS costs a server, and test
//! servers have self-signed certificates.

use std::io::{Read, Write};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client config for viewers: TLS 1.2 and 1.3 (ring), ALPN `http/1.1` when `http`, any
/// server certificate.
pub fn client_config(http: bool) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    if http {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Arc::new(config)
}

/// Accepts any server certificate; checks the handshake's signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One viewer's TLS session over its socket.
#[derive(Debug)]
pub struct Session {
    conn: ClientConnection,
}

impl Session {
    /// Runs the handshake on `socket` for `host` (a `host:port` or a bare host; only sent as
    /// SNI when it is a name).
    pub async fn connect(
        socket: &mut TcpStream,
        config: Arc<ClientConfig>,
        host: &str,
    ) -> anyhow::Result<Session> {
        let name = host_name(host);
        let server_name = ServerName::try_from(name.to_owned())
            .with_context(|| format!("not a server name: {name}"))?;
        let conn = ClientConnection::new(config, server_name).context("TLS set-up")?;
        let mut session = Session { conn };
        let mut buf = vec![0u8; 16 * 1024];
        while session.conn.is_handshaking() {
            session.flush(socket).await?;
            if !session.conn.is_handshaking() {
                break;
            }
            let n = socket.read(&mut buf).await.context("TLS handshake")?;
            if n == 0 {
                bail!("closed during the TLS handshake");
            }
            session.feed(&buf[..n])?;
        }
        session.flush(socket).await?;
        Ok(session)
    }

    /// Whether sealed records wait to be written (after a read: a key update, an alert).
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes the records waiting to be written.
    pub async fn flush(&mut self, socket: &mut TcpStream) -> anyhow::Result<()> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).context("sealing")?;
        }
        if !out.is_empty() {
            socket.write_all(&out).await.context("writing")?;
        }
        Ok(())
    }

    /// Seals `data` and writes it.
    pub async fn write_all(&mut self, socket: &mut TcpStream, data: &[u8]) -> anyhow::Result<()> {
        self.conn.writer().write_all(data).context("sealing")?;
        self.flush(socket).await
    }

    /// Reads plaintext into `buf`, reading the socket as needed (for the set-up phases; the
    /// lean readers use [`Session::decrypt`]). 0 is the end of the stream.
    pub async fn read(&mut self, socket: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<usize> {
        let mut cipher = vec![0u8; 16 * 1024];
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(anyhow::Error::new(e).context("TLS read")),
            }
            self.flush(socket).await?;
            let n = socket.read(&mut cipher).await.context("reading")?;
            if n == 0 {
                return Ok(0);
            }
            self.feed(&cipher[..n])?;
        }
    }

    /// Plaintext already decrypted and not yet read.
    pub fn take_buffered(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.conn.reader().read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(out),
            Err(e) => Err(anyhow::Error::new(e).context("TLS read")),
        }
    }

    /// Decrypts `cipher` (what one read of the socket returned), calling `deliver` with each
    /// run of plaintext (in `plain`, a buffer shared by the thread's viewers). Stops early
    /// when `deliver` returns true, and returns whether it did; the end of the stream
    /// (close_notify) is an error, as a closed socket is.
    pub fn decrypt(
        &mut self,
        mut cipher: &[u8],
        plain: &mut [u8],
        mut deliver: impl FnMut(&[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<bool> {
        while !cipher.is_empty() {
            self.conn.read_tls(&mut cipher).context("TLS input")?;
            self.conn.process_new_packets().context("TLS")?;
            loop {
                match self.conn.reader().read(plain) {
                    Ok(0) => bail!("closed by the server (TLS close_notify)"),
                    Ok(n) => {
                        if deliver(&plain[..n])? {
                            return Ok(true);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(anyhow::Error::new(e).context("TLS read")),
                }
            }
        }
        Ok(false)
    }

    fn feed(&mut self, mut cipher: &[u8]) -> anyhow::Result<()> {
        while !cipher.is_empty() {
            self.conn.read_tls(&mut cipher).context("TLS input")?;
            self.conn.process_new_packets().context("TLS")?;
        }
        Ok(())
    }
}

/// The host of `host:port` (`[v6]:port` too), or `host` as it is.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("[::1]:1936"), "::1");
    }
}
