//! Where the broker is: `mqtt[s]://host[:port]`, parsed by hand, every error quoting the URL
//! with its credentials masked.

use anyhow::{Context, Result, bail, ensure};

/// Where the broker is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Broker {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (host: a name, an IPv4 address or an
    /// IPv6 address in brackets). By hand: the `url` crate would pull in the ICU stack, whose
    /// derive macros change `syn`'s features and so recompile every macro user (Burn, tract).
    pub fn parse(url: &str) -> Result<Self> {
        // Every error quotes the URL with any password in it masked: errors reach logs.
        let text = &redacted(url);
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{text:?} is not a URL like mqtt://host:1883"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => bail!("{text:?}: scheme {other}:// is not mqtt:// or mqtts://"),
        };
        // Credentials in a URL end up in logs and `ps`: they belong in username/password_file.
        ensure!(
            !rest.contains('@'),
            "{text:?}: put credentials in publish.mqtt.username and password_file, not in the URL"
        );
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        ensure!(
            !authority.contains(['/', '?', '#']),
            "{text:?}: only mqtt[s]://host[:port] is understood (no path or query)"
        );
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').with_context(|| format!("{text:?}: unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        ensure!(
            !host.is_empty() && !host.contains(char::is_whitespace),
            "{text:?} has no host"
        );
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .with_context(|| format!("{text:?}: port {p:?} is not a number in 1..=65535"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// `url` with whatever precedes its last `@` after the scheme (user and password) masked.
fn redacted(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let keep = url.find("://").map_or(0, |i| i + 3).min(at);
    format!("{}***{}", &url[..keep], &url[at..])
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports_and_refuse_what_would_leak_or_be_ignored() {
        let b = Broker::parse("mqtt://broker.local").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port), (false, "broker.local", 1883));
        let b = Broker::parse("mqtts://10.0.0.2:9000").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port), (true, "10.0.0.2", 9000));
        assert_eq!(
            Broker::parse("mqtts://[::1]").unwrap().to_string(),
            "mqtts://[::1]:8883"
        );
        let err = |url: &str| format!("{:#}", Broker::parse(url).unwrap_err());
        assert!(err("http://x").contains("not mqtt:// or mqtts://"));
        assert!(err("mqtt://user:secret@x").contains("not in the URL"));
        assert!(!err("mqtt://user:secret@x").contains("secret"));
        assert!(!err("mqtt://fer:SECRET@127.0.0.1:1883/path").contains("SECRET"));
        assert!(!err("mqtt://fer:SE@CRET@127.0.0.1:99999").contains("CRET"));
        assert!(
            !err("mqtt:/fer:SECRET@x").contains("SECRET"),
            "{}",
            err("mqtt:/fer:SECRET@x")
        );
        assert!(err("mqtt://x/topic").contains("no path"));
        assert!(err("broker:1883").contains("not a URL"));
        assert!(err("mqtt://x:99999").contains("port \"99999\""));
        assert!(err("mqtt://:1883").contains("has no host"));
    }
}
