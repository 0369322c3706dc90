//! The HTTP/1.1 side of an HTTP-FLV viewer: the URL, the GET request, the response head and a
//! body decoder for chunked, Content-Length and close-delimited bodies. Sans-IO: bytes in,
//! body bytes out.

use anyhow::{Context, bail};

/// Largest response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;

/// An `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// host:port to connect to (port 80 when absent).
    pub addr: String,
    /// The Host header.
    pub host: String,
    /// Path and query.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://host[:port]/path`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("not an http:// URL: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.is_empty() {
            bail!("no host in {url}");
        }
        let has_port = host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !host.ends_with(']');
        let addr = if has_port {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        Ok(Self {
            addr,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The GET request for this URL.
    pub fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-bench\r\nAccept: */*\r\n\r\n",
            self.path, self.host
        )
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// `Content-Length`.
    Length(u64),
    /// Until the server closes (HTTP/1.0 style).
    Close,
}

/// Parses a complete response head (up to and including the blank line): status and framing.
pub fn parse_head(head: &[u8]) -> anyhow::Result<(u16, Framing)> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 response: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut framing = Framing::Close;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            framing = Framing::Length(value.parse().context("bad Content-Length")?);
        }
    }
    Ok((status, framing))
}

/// Where the end of the response head is in `buf`: the index just past `\r\n\r\n`.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `ext` once past a `;` extension.
    Size {
        value: u64,
        digits: u8,
        ext: bool,
    },
    /// Expecting the LF ending the size line.
    SizeLf(u64),
    /// Inside chunk data, bytes left.
    Data(u64),
    /// Expecting CR then LF after the data.
    DataCr,
    DataLf,
    /// After the last (0-size) chunk: the body is over.
    Done,
}

/// Decodes a response body incrementally.
#[derive(Debug)]
pub struct BodyDecoder {
    framing: Framing,
    chunk: Chunk,
    remaining: u64,
}

impl BodyDecoder {
    /// A decoder for a body with this framing.
    pub fn new(framing: Framing) -> Self {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        Self {
            framing,
            chunk: Chunk::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
            remaining,
        }
    }

    /// How the body is delimited.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Feeds received bytes; `sink` gets body bytes. Returns true once the body is complete
    /// (last chunk, or Content-Length reached).
    pub fn feed(&mut self, mut data: &[u8], mut sink: impl FnMut(&[u8])) -> anyhow::Result<bool> {
        match self.framing {
            Framing::Close => {
                sink(data);
                return Ok(false);
            }
            Framing::Length(_) => {
                let n = (data.len() as u64).min(self.remaining) as usize;
                sink(&data[..n]);
                self.remaining -= n as u64;
                return Ok(self.remaining == 0);
            }
            Framing::Chunked => {}
        }
        while !data.is_empty() {
            match self.chunk {
                Chunk::Data(left) => {
                    let n = (data.len() as u64).min(left) as usize;
                    sink(&data[..n]);
                    data = &data[n..];
                    self.chunk = if left == n as u64 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - n as u64)
                    };
                }
                Chunk::Done => return Ok(true),
                state => {
                    let b = data[0];
                    data = &data[1..];
                    self.chunk = match (state, b) {
                        (
                            Chunk::Size {
                                value,
                                digits,
                                ext: false,
                            },
                            b,
                        ) if b.is_ascii_hexdigit() => {
                            if digits >= 15 {
                                bail!("chunk size too long");
                            }
                            let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                            Chunk::Size {
                                value: value << 4 | d,
                                digits: digits + 1,
                                ext: false,
                            }
                        }
                        (Chunk::Size { value, digits, .. }, b'\r') if digits > 0 => {
                            Chunk::SizeLf(value)
                        }
                        (Chunk::Size { value, digits, .. }, b';' | b' ' | b'\t') if digits > 0 => {
                            Chunk::Size {
                                value,
                                digits,
                                ext: true,
                            }
                        }
                        (s @ Chunk::Size { ext: true, .. }, _) => s,
                        (Chunk::SizeLf(0), b'\n') => Chunk::Done,
                        (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
                        (Chunk::DataCr, b'\r') => Chunk::DataLf,
                        (Chunk::DataLf, b'\n') => Chunk::Size {
                            value: 0,
                            digits: 0,
                            ext: false,
                        },
                        (_, b) => bail!("bad chunked encoding at byte {b:#04x}"),
                    };
                }
            }
        }
        Ok(self.chunk == Chunk::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/live/k.flv").unwrap();
        assert_eq!(
            (u.addr.as_str(), u.host.as_str(), u.path.as_str()),
            ("127.0.0.1:8080", "127.0.0.1:8080", "/live/k.flv")
        );
        assert_eq!(
            HttpUrl::parse("http://localhost/a.flv").unwrap().addr,
            "localhost:80"
        );
        assert!(HttpUrl::parse("rtmp://x/a/b").is_err());
    }

    #[test]
    fn heads() {
        let h =
            b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(head_end(h), Some(h.len()));
        assert_eq!(parse_head(h).unwrap(), (200, Framing::Chunked));
        let h = b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n";
        assert_eq!(parse_head(h).unwrap(), (200, Framing::Length(10)));
        let h = b"HTTP/1.0 404 Not Found\r\n\r\n";
        assert_eq!(parse_head(h).unwrap(), (404, Framing::Close));
        assert!(parse_head(b"RTMP nonsense\r\n\r\n").is_err());
    }

    #[test]
    fn dechunks_at_any_split() {
        let wire = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for step in 1..wire.len() {
            let mut d = BodyDecoder::new(Framing::Chunked);
            let mut out = Vec::new();
            let mut done = false;
            for piece in wire.chunks(step) {
                done = d.feed(piece, |b| out.extend_from_slice(b)).unwrap();
            }
            assert!(done, "step {step}");
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
        }
        let mut d = BodyDecoder::new(Framing::Chunked);
        assert!(d.feed(b"zz\r\n", |_| {}).is_err());
    }

    #[test]
    fn length_and_close() {
        let mut d = BodyDecoder::new(Framing::Length(4));
        let mut out = Vec::new();
        assert!(!d.feed(b"ab", |b| out.extend_from_slice(b)).unwrap());
        assert!(d.feed(b"cdef", |b| out.extend_from_slice(b)).unwrap());
        assert_eq!(out, b"abcd");
        let mut d = BodyDecoder::new(Framing::Close);
        assert!(!d.feed(b"xyz", |_| {}).unwrap());
    }
}
