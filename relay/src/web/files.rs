//! The web messenger's files, read once at start into memory (a few
//! megabytes: no path from a request ever reaches the file system), and
//! the security headers of every answer on the TCP port.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// At most this many files.
pub(crate) const MAX_FILES: usize = 1_000;
/// At most this many bytes in all.
pub(crate) const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;

/// What pages of the relay may do: scripts and styles of the relay only
/// (WebAssembly compiled from them), connections to the relay only (the
/// page's own origin, and WebTransport at the relay's names on the QUIC
/// port when that is another port), images from the relay or made on the
/// page (a received photo), no frames, no plugins, no forms, no inline
/// script or style.
pub(crate) fn content_security_policy(names: &[String], quic_port: u16) -> HeaderValue {
    let mut connect = String::from("'self'");
    for name in names {
        // `host[:port]`, the host perhaps an IPv6 address in brackets.
        let (host, port) = match name.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
                (h, p.parse().unwrap_or(443))
            }
            _ => (name.as_str(), 443),
        };
        if port != quic_port {
            connect.push_str(&format!(" https://{host}:{quic_port}"));
        }
    }
    let csp = format!(
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
         img-src 'self' blob: data:; connect-src {connect}; manifest-src 'self'; \
         worker-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    // Names are checked at start (`valid_relay_name`): nothing here can
    // break a header.
    HeaderValue::from_str(&csp).unwrap_or(HeaderValue::from_static("default-src 'none'"))
}

/// The files under a directory, by request path.
#[derive(Debug, Default, Clone)]
pub(crate) struct Files {
    by_path: HashMap<String, (HeaderValue, Bytes)>,
}

impl Files {
    /// Reads every file under `root` (an `index.html` among them).
    pub(crate) fn load(root: &Path) -> anyhow::Result<Self> {
        let mut files = Self::default();
        let mut total = 0u64;
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir)
                .with_context(|| format!("reading the web root {}", dir.display()))?;
            for entry in entries {
                let path = entry
                    .with_context(|| format!("reading the web root {}", dir.display()))?
                    .path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(root)
                    .with_context(|| format!("{} is outside the web root", path.display()))?;
                let Some(rel) = rel.to_str() else {
                    anyhow::bail!("{} is not a UTF-8 file name", path.display());
                };
                let data =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                total += data.len() as u64;
                anyhow::ensure!(
                    files.by_path.len() < MAX_FILES && total <= MAX_TOTAL_BYTES,
                    "the web root {} holds more than {MAX_FILES} files or {} MiB",
                    root.display(),
                    MAX_TOTAL_BYTES >> 20
                );
                let url = format!("/{}", rel.replace(std::path::MAIN_SEPARATOR, "/"));
                files
                    .by_path
                    .insert(url, (content_type(&path), Bytes::from(data)));
            }
        }
        anyhow::ensure!(
            files.by_path.contains_key("/index.html"),
            "the web root {} has no index.html",
            root.display()
        );
        Ok(files)
    }

    /// The answer to a GET (or HEAD) of `path`.
    pub(crate) fn get(&self, path: &str, head: bool) -> Response<Full<Bytes>> {
        let path = if path == "/" { "/index.html" } else { path };
        let Some((kind, data)) = self.by_path.get(path) else {
            return super::text(StatusCode::NOT_FOUND, "not found");
        };
        let body = if head { Bytes::new() } else { data.clone() };
        let mut r = Response::new(Full::new(body));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, kind.clone());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
        // Small files, one version at a time: always ask again.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        r
    }
}

/// A file's type, by its extension.
fn content_type(path: &Path) -> HeaderValue {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    HeaderValue::from_static(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "wasm" => "application/wasm",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    })
}

/// `r` with the headers every answer on the port carries.
pub(crate) fn secured(mut r: Response<Full<Bytes>>, csp: &HeaderValue) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, csp.clone()),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ),
        (
            header::HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=()"),
        ),
    ] {
        h.insert(name, value);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_src(names: &[&str], quic_port: u16) -> String {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let csp = content_security_policy(&names, quic_port);
        let csp = csp.to_str().unwrap_or_default().to_owned();
        csp.split("; ")
            .find_map(|d| d.strip_prefix("connect-src "))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn pages_may_connect_to_the_relay_only_and_to_its_quic_port() {
        // QUIC and TCP on one port: the page's own origin covers both.
        assert_eq!(connect_src(&["relay.city.example"], 443), "'self'");
        assert_eq!(
            connect_src(&["localhost:7300", "[::1]:7300"], 7300),
            "'self'"
        );
        // QUIC elsewhere: WebTransport there, at the relay's names only.
        assert_eq!(
            connect_src(&["relay.city.example", "[::1]:7300"], 7443),
            "'self' https://relay.city.example:7443 https://[::1]:7443"
        );
    }
}
