//! TLS for broadcasters and viewers: the RTMPS and HTTPS listeners and the certificate they
//! present.
//!
//! - [`Store`]: the certificate in use, loaded from a PEM chain and key, swapped whole by
//!   [`Store::reload`] while handshakes read it (rustls asks it per handshake, so a connection
//!   keeps the certificate it was made with and a reload touches no open connection). A file
//!   that is missing, unreadable, not PEM or not the pair of the other is a [`TlsError`]
//!   naming the file; a refused reload keeps the certificate in use.
//! - [`serve_rtmps`] and [`serve_https`]: accept, admit under the protocol's connection limit
//!   (shared with its clear-text listener), handshake within `tls.handshake_timeout_ms`, then
//!   hand the decrypted connection to the clear-text front end on a kernel socket
//!   (`sluice_runtime::bridge`, which says why TLS is terminated here and not in the data
//!   path). HTTPS offers HTTP/2 and HTTP/1.1 by ALPN; HTTP/2 is served by [`crate::h2`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
use sluice_core::metrics::proto;
use sluice_runtime::{Context, accept, bridge};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, info_span};

use crate::Front;
use crate::limit::{Admission, Limit};

/// ALPN protocol ids the HTTPS listener offers, preferred first.
pub const HTTPS_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate could not be loaded. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read (missing, no permission, a directory).
    #[error("{what} file {path}: cannot read it: {source}")]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file is not valid PEM.
    #[error("{what} file {path}: not valid PEM: {source}")]
    Pem {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("certificate file {path}: no PEM certificate (BEGIN CERTIFICATE) in it")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error("key file {path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The certificate does not parse as X.509.
    #[error("certificate file {path}: not a usable certificate: {source}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The key is of a kind rustls cannot sign with, or broken.
    #[error("key file {path}: not a usable private key: {source}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The key is not the certificate's.
    #[error("key file {key} does not match the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// The certificate the TLS listeners present, from two PEM files, replaceable while they
/// run (see the module doc).
#[derive(Debug)]
pub struct Store {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The leaf's notAfter in Unix seconds; `i64::MIN` when it could not be read.
    not_after: AtomicI64,
}

impl Store {
    /// Loads the chain in `cert_file` (leaf first) and its key in `key_file`.
    pub fn load(
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Result<Arc<Store>, TlsError> {
        let (cert_file, key_file) = (cert_file.into(), key_file.into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (key, not_after) = read(&cert_file, &key_file, &provider)?;
        Ok(Arc::new(Store {
            cert_file,
            key_file,
            provider,
            current: ArcSwap::from_pointee(key),
            not_after: AtomicI64::new(not_after.unwrap_or(i64::MIN)),
        }))
    }

    /// Reads both files again and, if they load, presents the new certificate from the next
    /// handshake on. Otherwise the error, and the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (key, not_after) = read(&self.cert_file, &self.key_file, &self.provider)?;
        self.current.store(Arc::new(key));
        self.not_after
            .store(not_after.unwrap_or(i64::MIN), Ordering::Relaxed);
        Ok(())
    }

    /// The certificate file.
    pub fn cert_file(&self) -> &Path {
        &self.cert_file
    }

    /// The key file.
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// The certificate in use (chain and key).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// When the certificate in use expires, Unix seconds (`None` if its validity could not
    /// be read).
    pub fn not_after(&self) -> Option<i64> {
        Some(self.not_after.load(Ordering::Relaxed)).filter(|t| *t != i64::MIN)
    }

    /// A server config presenting this store's certificate, offering `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        // The ring provider supports rustls' default protocol versions: this cannot fail.
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl ResolvesServerCert for Store {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads and checks a chain and its key; the leaf's notAfter if it could be read.
fn read(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Option<i64>), TlsError> {
    let read_file = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let pem_error = |what, path: &Path, source| TlsError::Pem {
        what,
        path: path.to_owned(),
        source,
    };
    let cert_pem = read_file("certificate", cert_file)?;
    let key_pem = read_file("key", key_file)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| pem_error("certificate", cert_file, source))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_file.to_owned(),
        });
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::NoKey {
                path: key_file.to_owned(),
            });
        }
        Err(source) => return Err(pem_error("key", key_file, source)),
    };
    let not_after = validity_end(&chain[0]);
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::BadKey {
            path: key_file.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // A key that cannot tell its public half (rare) is taken on trust, as rustls does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::Mismatch {
                cert: cert_file.to_owned(),
                key: key_file.to_owned(),
            });
        }
        Err(source) => {
            return Err(TlsError::BadCertificate {
                path: cert_file.to_owned(),
                source,
            });
        }
    }
    Ok((certified, not_after))
}

/// The notAfter of an X.509 certificate, Unix seconds: `Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
/// validity SEQUENCE { notBefore, notAfter }, ... }, ... }`. Only as much DER as that path
/// needs is read; `None` for anything else.
fn validity_end(cert: &[u8]) -> Option<i64> {
    let (tag, cert, _) = der(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, mut tbs, _) = der(cert)?;
    if tag != 0x30 {
        return None;
    }
    // [0] EXPLICIT version, then serial, signature algorithm, issuer.
    let (tag, _, rest) = der(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, rest) = der(tbs)?;
        if tag != expected {
            return None;
        }
        tbs = rest;
    }
    let (tag, validity, _) = der(tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der(validity)?;
    let (tag, time, _) = der(rest)?;
    asn1_time(tag, time)
}

/// One DER element at the front of `data`: its tag, contents and what follows it.
fn der(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(count)?;
        rest = after;
        bytes.iter().fold(0usize, |n, b| n << 8 | usize::from(*b))
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}

/// An ASN.1 UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, tag
/// 0x18), as certificates write them (RFC 5280 4.1.2.5), in Unix seconds.
fn asn1_time(tag: u8, text: &[u8]) -> Option<i64> {
    let digits = text.strip_suffix(b"Z")?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |range: std::ops::Range<usize>| {
        digits
            .get(range)?
            .iter()
            .try_fold(0i64, |n, d| Some(n * 10 + i64::from(d - b'0')))
    };
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(0..2)?;
            // RFC 5280: 50..=99 are 19YY, 00..=49 are 20YY.
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (num(0..4)?, 4),
        _ => return None,
    };
    let field = |i: usize| num(rest + 2 * i..rest + 2 * i + 2);
    let (month, day, hour, minute, second) =
        (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    Some(days_since_epoch(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar. Years are counted
/// from March, so that the leap day ends a year: a 400-year era has 146,097 days, and the
/// day of a March-based year is `(153 * month + 2) / 5 + day - 1` (the month lengths 31, 30,
/// 31, 30, 31 repeat from March).
fn days_since_epoch(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719,468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

/// Accepts RTMPS connections (RTMP over TLS; no ALPN) until shutdown, and serves each, once
/// decrypted, as the RTMP listener serves its own. `limit` is the RTMP listener's. Fails only
/// when the listener does.
pub async fn serve_rtmps(
    listener: TcpListener,
    front: Front,
    limit: Limit,
    store: Arc<Store>,
) -> std::io::Result<()> {
    let config = store.server_config(&[]);
    serve_tls(
        listener,
        front,
        limit,
        config,
        Protocol::Rtmps,
        |front, stream, peer, admission| async move {
            let Some(plain) = bridged(&front.ctx, stream) else {
                return;
            };
            crate::rtmp_conn::spawn_connection(&front, admission, plain, peer, true);
        },
    )
    .await
}

/// Accepts HTTPS connections until shutdown: HTTP/2 when the client offers it (ALPN `h2`,
/// see [`crate::h2`]), HTTP/1.1 otherwise, served as the HTTP listener serves its own.
/// `limit` is the HTTP listener's. Fails only when the listener does.
pub async fn serve_https(
    listener: TcpListener,
    front: Front,
    limit: Limit,
    store: Arc<Store>,
) -> std::io::Result<()> {
    let config = store.server_config(&HTTPS_ALPN);
    let requests = limit.clone();
    serve_tls(
        listener,
        front,
        limit,
        config,
        Protocol::Https,
        move |front, stream, peer, admission| {
            let requests = requests.clone();
            async move {
                if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                    crate::h2::serve(front, requests, stream, peer, admission).await;
                    return;
                }
                let Some(plain) = bridged(&front.ctx, stream) else {
                    return;
                };
                crate::http::spawn_connection(&front, admission, plain, peer, true);
            }
        },
    )
    .await
}

/// The TLS listeners, as their handshakes are counted.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Rtmps,
    Https,
}

impl Protocol {
    /// The `protocol` label of `tls_handshakes`.
    fn label(self) -> &'static str {
        match self {
            Protocol::Rtmps => proto::RTMPS,
            Protocol::Https => proto::HTTPS,
        }
    }

    /// The clear-text protocol its connections count as (refusals, connections, bytes).
    fn plain(self) -> &'static str {
        match self {
            Protocol::Rtmps => proto::RTMP,
            Protocol::Https => proto::HTTP_FLV,
        }
    }
}

/// The accept loop of a TLS listener: admission under `limit` and the address's limit
/// before the handshake (so a flood of handshakes is bounded too), the handshake within
/// `tls.handshake_timeout_ms`, counted, then `connected` with the stream, in the
/// connection's task.
async fn serve_tls<F, Fut>(
    listener: TcpListener,
    front: Front,
    limit: Limit,
    config: Arc<ServerConfig>,
    protocol: Protocol,
    connected: F,
) -> std::io::Result<()>
where
    F: Fn(Front, TlsStream<TcpStream>, SocketAddr, Admission) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(config);
    let ctx = front.ctx.clone();
    accept::until_shutdown(&listener, &ctx, protocol.label(), |socket, peer| {
        let Ok(admission) = limit.admit(&ctx, protocol.plain(), peer.ip()) else {
            drop(socket);
            return;
        };
        // TLS records leave whole: Nagle would only hold a record's tail for an ACK.
        let _ = socket.set_nodelay(true);
        let task_ctx = ctx.clone();
        let front = front.clone();
        let acceptor = acceptor.clone();
        let connected = connected.clone();
        let span = info_span!("tls", %peer, protocol = protocol.label());
        ctx.tracker.spawn(
            async move {
                let deadline = task_ctx.config.load().tls.handshake_timeout();
                let shutdown = task_ctx.shutdown.clone();
                let handshake = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    handshake = timeout(deadline, acceptor.accept(socket)) => handshake,
                };
                let (result, stream) = match handshake {
                    Ok(Ok(stream)) => ("ok", Some(stream)),
                    Ok(Err(error)) => {
                        debug!(%error, "TLS handshake failed");
                        ("error", None)
                    }
                    Err(_) => {
                        debug!(?deadline, "TLS handshake timed out");
                        ("timeout", None)
                    }
                };
                task_ctx
                    .metrics
                    .tls_handshakes
                    .get_or_create(&[("protocol", protocol.label()), ("result", result)])
                    .inc();
                if let Some(stream) = stream {
                    connected(front, stream, peer, admission).await;
                }
            }
            .instrument(span),
        );
    })
    .await
}

/// The plain end of a bridge for `stream`, whose pump runs in a task of its own on the
/// tracker; `None` (the connection dropped) if no socket pair could be made.
pub(crate) fn bridged(ctx: &Arc<Context>, stream: TlsStream<TcpStream>) -> Option<TcpStream> {
    let (plain, pump_end) = match bridge::pair() {
        Ok(pair) => pair,
        Err(error) => {
            debug!(%error, "no socket pair for a TLS connection");
            return None;
        }
    };
    let shutdown = ctx.shutdown.clone();
    ctx.tracker
        .spawn(async move { bridge::pump(stream, pump_end, &shutdown).await }.in_current_span());
    Some(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` valid until `year`-06-15 12:30:00 UTC: its PEM, its
    /// key's PEM and its DER.
    fn certificate(name: &str, year: i32) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
        params.not_after = rcgen::date_time_ymd(year, 6, 15).replace_time(
            rcgen::date_time_ymd(1970, 1, 1)
                .time()
                .replace_hour(12)
                .unwrap()
                .replace_minute(30)
                .unwrap(),
        );
        let cert = params.self_signed(&key).expect("self-signed");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    #[test]
    fn loads_a_pair_reads_its_expiry_and_reloads_new_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, der) = certificate("one.example", 2031);
        let cert_file = write(dir.path(), "cert.pem", &cert);
        let key_file = write(dir.path(), "key.pem", &key);
        let store = Store::load(&cert_file, &key_file).expect("loads");
        assert_eq!(store.current().cert[0].as_ref(), &der[..]);
        // 2031-06-15 12:30:00 UTC.
        assert_eq!(store.not_after(), Some(1_939_293_000));

        let (cert2, key2, der2) = certificate("two.example", 2040);
        write(dir.path(), "cert.pem", &cert2);
        write(dir.path(), "key.pem", &key2);
        store.reload().expect("reloads");
        assert_eq!(store.current().cert[0].as_ref(), &der2[..]);
        assert_eq!(store.not_after(), Some(2_223_376_200));
    }

    #[test]
    fn a_refused_reload_keeps_the_certificate_in_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, der) = certificate("one.example", 2031);
        let cert_file = write(dir.path(), "cert.pem", &cert);
        let key_file = write(dir.path(), "key.pem", &key);
        let store = Store::load(&cert_file, &key_file).expect("loads");
        // A renewal caught half way: the new certificate, the old key.
        let (cert2, _, _) = certificate("two.example", 2040);
        write(dir.path(), "cert.pem", &cert2);
        let error = store.reload().expect_err("mismatched");
        assert!(matches!(error, TlsError::Mismatch { .. }), "{error}");
        assert_eq!(store.current().cert[0].as_ref(), &der[..]);
        assert_eq!(store.not_after(), Some(1_939_293_000));
    }

    #[test]
    fn every_bad_file_is_named_with_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key, _) = certificate("one.example", 2031);
        let (_, other_key, _) = certificate("two.example", 2031);
        let cert_file = write(dir.path(), "cert.pem", &cert);
        let key_file = write(dir.path(), "key.pem", &key);
        let missing = dir.path().join("missing.pem");
        let error = |cert: &Path, key: &Path| Store::load(cert, key).unwrap_err().to_string();

        let e = error(&missing, &key_file);
        assert!(
            e.contains("missing.pem") && e.contains("cannot read"),
            "{e}"
        );
        let e = error(&cert_file, &missing);
        assert!(e.contains("key file") && e.contains("missing.pem"), "{e}");
        let empty = write(dir.path(), "empty.pem", "");
        let e = error(&empty, &key_file);
        assert!(
            e.contains("empty.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        // The key where the certificate should be, and the other way round.
        let e = error(&key_file, &key_file);
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = error(&cert_file, &cert_file);
        assert!(
            e.contains("cert.pem") && e.contains("no PEM private key"),
            "{e}"
        );
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );
        let e = error(&broken, &key_file);
        assert!(
            e.contains("broken.pem") && e.contains("not valid PEM"),
            "{e}"
        );
        let garbage = write(
            dir.path(),
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let e = error(&garbage, &key_file);
        assert!(
            e.contains("garbage.pem") && e.contains("not a usable certificate"),
            "{e}"
        );
        let other_key_file = write(dir.path(), "other.key", &other_key);
        let e = error(&cert_file, &other_key_file);
        assert!(
            e.contains("other.key") && e.contains("does not match") && e.contains("cert.pem"),
            "{e}"
        );
    }

    #[test]
    fn asn1_times_are_read_as_unix_seconds() {
        assert_eq!(asn1_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(asn1_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(asn1_time(0x18, b"20240229120000Z"), Some(1_709_208_000));
        assert_eq!(asn1_time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        for bad in [
            &b"2402291200Z"[..],
            b"240229120000",
            b"24022912000xZ",
            b"241329120000Z",
        ] {
            assert_eq!(asn1_time(0x17, bad), None, "{bad:?}");
        }
        assert_eq!(asn1_time(0x18, b"240229120000Z"), None);
    }

    #[test]
    fn days_count_leap_years() {
        assert_eq!(days_since_epoch(1970, 1, 1), 0);
        assert_eq!(days_since_epoch(2000, 3, 1), 11_017);
        assert_eq!(days_since_epoch(1969, 12, 31), -1);
        assert_eq!(
            days_since_epoch(2100, 3, 1) - days_since_epoch(2100, 2, 28),
            1
        );
    }

    #[test]
    fn truncated_der_is_not_read() {
        assert_eq!(der(&[0x30]), None);
        assert_eq!(der(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(der(&[0x30, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(
            der(&[0x02, 0x01, 7, 9]),
            Some((0x02, &[7u8][..], &[9u8][..]))
        );
        assert_eq!(validity_end(b"not a certificate"), None);
    }
}
