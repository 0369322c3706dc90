//! Webhook URLs (`[auth]` rules' `hook` and `done_hook`): what the webhook client can call,
//! `http://host[:port][/path][?query]`, checked when the config loads so that a URL the
//! client could not use is a config error, not a refusal (or an admission, with
//! `on_failure = "allow"`) at every call.

/// A parsed hook URL.
#[derive(Debug)]
pub struct HookUrl<'a> {
    /// `host[:port]` as written, for the `host` header.
    pub authority: &'a str,
    /// What to connect to: `host:port` (brackets kept around an IPv6 address).
    pub connect: String,
    /// Path and query, `/` when the URL has none.
    pub path: &'a str,
}

impl<'a> HookUrl<'a> {
    /// Parses `url`; the error says what is wrong with it, for the config error.
    pub fn parse(url: &'a str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("webhook URL {url:?}: {why}"));
        if url
            .bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii())
        {
            return bad("has spaces, control or non-ASCII characters");
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return bad("must be http://host:port/path");
        };
        if scheme.eq_ignore_ascii_case("https") {
            return bad(
                "https is not supported: hook servers are internal, use http://host:port/path",
            );
        }
        if !scheme.eq_ignore_ascii_case("http") {
            return bad("only http:// URLs are supported");
        }
        if url.contains('#') {
            return bad("must not have a #fragment");
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
            Some(_) => return bad("a query must follow a path (http://host:port/path?query)"),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return bad("must not carry user:password@");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((addr, after)) = v6.split_once(']') else {
                return bad("an IPv6 host needs its closing ]");
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("the host between [ ] is not an IPv6 address");
            }
            match after {
                "" => (&authority[..addr.len() + 2], None),
                p => match p.strip_prefix(':') {
                    Some(port) => (&authority[..addr.len() + 2], Some(port)),
                    None => return bad("junk after the IPv6 host"),
                },
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let host_ok = !host.is_empty()
            && (host.starts_with('[')
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !host_ok {
            return bad("no host, or a host with characters a host name cannot have");
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return bad("the port must be 1 to 65535"),
            },
        };
        Ok(HookUrl {
            authority,
            connect: format!("{host}:{port}"),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = HookUrl::parse("http://127.0.0.1:8080/hooks/publish?x=1").unwrap();
        assert_eq!(t.connect, "127.0.0.1:8080");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/hooks/publish?x=1");
        let t = HookUrl::parse("http://auth.internal").unwrap();
        assert_eq!((t.connect.as_str(), t.path), ("auth.internal:80", "/"));
        let t = HookUrl::parse("HTTP://[::1]:9/on_play").unwrap();
        assert_eq!((t.connect.as_str(), t.path), ("[::1]:9", "/on_play"));
        let t = HookUrl::parse("http://[::1]/").unwrap();
        assert_eq!(t.connect, "[::1]:80");

        let https = HookUrl::parse("https://auth.example/hook").unwrap_err();
        assert!(https.contains("https is not supported"), "{https}");
        for bad in [
            "",
            "auth:8080/hook",
            "rtmp://host/app",
            "http://",
            "http://:80/x",
            "http://host:0/x",
            "http://host:99999/x",
            "http://host:port/x",
            "http://user:pw@host/x",
            "http://host/x#frag",
            "http://host/x y",
            "http://host/x\r\nevil: 1",
            "http://host?x=1",
            "http://[::1/x",
            "http://[nope]/x",
            "http://[::1]x/",
            "http://ho_st/x",
        ] {
            assert!(HookUrl::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
