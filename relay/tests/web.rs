//! The relay's TCP port as a browser sees it (docs/web.md): the web
//! messenger's files under a strict Content-Security-Policy, enrollment by
//! a one-time code over HTTP, WebSocket upgrades only from the relay's own
//! pages, and authentication bound to the relay's name instead of the TLS
//! exporter (docs/protocol.md, "Browsers").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use herold_client::raw::RawConnection;
use herold_proto::v1::{self, ErrorCode};
use herold_relay::Config;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// TLS to the relay's TCP port, pinning its certificate.
async fn tls_to(relay: &TestRelay) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(relay.tcp_addr.unwrap())
        .await
        .unwrap();
    herold_client::tls::fallback_connector(relay.fingerprint)
        .unwrap()
        .connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// One HTTPS request to the relay's TCP port, pinning its certificate.
async fn https(
    relay: &TestRelay,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, HeaderMap, Bytes) {
    let tls = tls_to(relay).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        DEADLINE,
        send.send_request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()),
    )
    .await
    .expect("answered in time")
    .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn web_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("index.html"),
        "<!doctype html><title>Herold</title>",
    )
    .unwrap();
    std::fs::create_dir(root.path().join("assets")).unwrap();
    std::fs::write(root.path().join("assets/app.wasm"), b"\0asm\x01\0\0\0").unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_the_web_messenger_under_a_strict_policy() {
    let dir = tempfile::tempdir().unwrap();
    let root = web_root();
    let mut config = Config::dev(dir.path());
    config.web_root = Some(root.path().to_path_buf());
    let relay = TestRelay::start_with(config).await;

    let (status, headers, body) = https(&relay, Method::GET, "/", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"<!doctype html><title>Herold</title>");
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");

    let (status, headers, body) = https(&relay, Method::GET, "/assets/app.wasm", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/wasm");
    assert_eq!(&body[..], b"\0asm\x01\0\0\0");
    // Nothing outside the files read at start, whatever the path says.
    for path in [
        "/../index.html",
        "/assets/../../etc/passwd",
        "/nope.js",
        "/%2e%2e/",
    ] {
        let (status, headers, _) = https(&relay, Method::GET, path, &[], "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(
            headers.contains_key(header::CONTENT_SECURITY_POLICY),
            "{path}"
        );
    }
    let (status, _, _) = https(&relay, Method::DELETE, "/", &[], "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // A relay without a web root says so.
    let other_dir = tempfile::tempdir().unwrap();
    let plain = TestRelay::start(other_dir.path()).await;
    let (status, _, body) = https(&plain, Method::GET, "/", &[], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&body).contains("--web-root"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_enrolls_by_code_and_signs_in_with_the_relays_name() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let [_, kb] = relay.group_of("g", ["alice", "bob"]).await;
    let code = relay.issue_code("alice").await;
    let key = herold_client::generate_key().unwrap();
    let public = hex::encode(key.verifying_key().to_bytes());
    let json = [("content-type", "application/json")];

    // Bad requests get specific errors and enroll nothing.
    let (status, _, body) = https(&relay, Method::POST, "/v1/enroll", &[], "{}").await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body:?}");
    let (status, _, body) = https(&relay, Method::POST, "/v1/enroll", &json, "{\"code\":1}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("\"error\""));
    let wrong =
        format!(r#"{{"code":"WRONG-CODE","device_id":"alice.web","public_key":"{public}"}}"#);
    let (status, _, _) = https(&relay, Method::POST, "/v1/enroll", &json, &wrong).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let big = format!(r#"{{"code":"{}"}}"#, "x".repeat(5000));
    let (status, _, _) = https(&relay, Method::POST, "/v1/enroll", &json, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let body = format!(r#"{{"code":"{code}","device_id":"alice.web","public_key":"{public}"}}"#);
    let (status, _, answer) = https(&relay, Method::POST, "/v1/enroll", &json, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["account_id"], "alice");
    assert_eq!(answer["device_id"], "alice.web");
    // The code is spent.
    let (status, _, _) = https(&relay, Method::POST, "/v1/enroll", &json, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let tcp = relay.tcp_addr.unwrap();
    let name = format!("localhost:{}", tcp.port());
    let idle = Duration::from_secs(30);
    // Another server's name: refused.
    let mut evil = RawConnection::connect_tcp(tcp, relay.fingerprint, idle)
        .await
        .unwrap();
    let e = evil
        .authenticate_as("alice.web", &key, Some("evil.example"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AuthFailed), "{e}");
    // On QUIC every client reads the exporter: no name binding there.
    let mut quic = RawConnection::connect(relay.addr, relay.fingerprint)
        .await
        .unwrap();
    let e = quic
        .authenticate_as("alice.web", &key, Some(&name))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AuthFailed), "{e}");

    let mut web = RawConnection::connect_tcp(tcp, relay.fingerprint, idle)
        .await
        .unwrap();
    let ok = web
        .authenticate_as("alice.web", &key, Some(&name))
        .await
        .unwrap();
    assert_eq!(ok.account_id, "alice");
    let bob = relay.client("bob.phone", &kb).await;
    bob.send("g", b"to the browser".to_vec(), 0).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, async {
        loop {
            if let v1::server_frame::Kind::Deliver(d) = web.expect_frame().await.unwrap() {
                return d.envelope.unwrap().ciphertext;
            }
        }
    })
    .await
    .expect("delivered in time");
    assert_eq!(got, b"to the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_relays_own_pages_and_named_origins_open_a_websocket() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::dev(dir.path());
    config.web_origins = vec!["https://messenger.city.example".into()];
    let relay = TestRelay::start_with(config).await;
    let tcp = relay.tcp_addr.unwrap();
    let relay = &relay;
    let upgrade = |origin: Option<String>| async move {
        let tls = tls_to(relay).await;
        let mut req = format!("wss://localhost:{}/v1", tcp.port())
            .into_client_request()
            .unwrap();
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        match tokio_tungstenite::client_async(req, tls).await {
            Ok((_, resp)) => resp.status(),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status(),
            Err(e) => panic!("{e}"),
        }
    };
    // A native client sends no origin.
    assert_eq!(upgrade(None).await, StatusCode::SWITCHING_PROTOCOLS);
    for own in [
        format!("https://localhost:{}", tcp.port()),
        format!("https://127.0.0.1:{}", tcp.port()),
        "https://messenger.city.example".into(),
    ] {
        assert_eq!(
            upgrade(Some(own.clone())).await,
            StatusCode::SWITCHING_PROTOCOLS,
            "{own}"
        );
    }
    for foreign in [
        "https://evil.example".to_owned(),
        format!("http://localhost:{}", tcp.port()),
        "null".into(),
    ] {
        assert_eq!(
            upgrade(Some(foreign.clone())).await,
            StatusCode::FORBIDDEN,
            "{foreign}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_websocket_serves_only_an_authenticated_device() {
    use herold_proto::TRANSFER_PATH;
    use herold_proto::v1::{attachment_request, attachment_response};

    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let [ka] = relay.group_of("g", ["alice"]).await;
    let tcp = relay.tcp_addr.unwrap();
    let idle = Duration::from_secs(30);
    let open = || RawConnection::connect_tcp_at(tcp, relay.fingerprint, idle, TRANSFER_PATH);
    let download = v1::AttachmentRequest {
        kind: Some(attachment_request::Kind::Download(v1::Download {
            attachment_id: vec![9; 16],
            conversation_id: "g".into(),
            from_chunk: 0,
        })),
    };
    let request = herold_proto::codec::frame_bytes(&download, 16 * 1024).unwrap();

    // A request before authentication gets a session's refusal, not an
    // answer.
    let mut early = open().await.unwrap();
    early.send_bytes(&request).await.unwrap();
    let e = early.expect_frame().await.unwrap_err();
    assert!(
        matches!(
            e.code(),
            Some(ErrorCode::AuthRequired | ErrorCode::BadFrame)
        ),
        "{e}"
    );
    // A key that is not the device's: AUTH_FAILED, as on a session.
    let stranger = herold_client::generate_key().unwrap();
    let e = open()
        .await
        .unwrap()
        .authenticate("alice.phone", &stranger)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AuthFailed), "{e}");

    // The device's key: AuthOk, then the transfer is served (here the
    // relay's answer about an attachment that does not exist).
    let mut t = open().await.unwrap();
    let ok = t.authenticate("alice.phone", &ka).await.unwrap();
    assert_eq!(ok.account_id, "alice");
    t.send_bytes(&request).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 4 || got.len() < 4 + u32::from_be_bytes(got[..4].try_into().unwrap()) as usize
    {
        let more = tokio::time::timeout(DEADLINE, t.read_raw())
            .await
            .unwrap()
            .unwrap()
            .expect("an answer before the end");
        got.extend_from_slice(&more);
    }
    let r: v1::AttachmentResponse = herold_proto::codec::decode_message(&got[4..]).unwrap();
    match r.kind {
        Some(attachment_response::Kind::Error(e)) => {
            assert_eq!(e.code, ErrorCode::NoSuchAttachment as i32, "{e:?}");
        }
        other => panic!("{other:?}"),
    }
}

/// A QUIC connection to `relay` offering `alpn`, pinning `fingerprint`.
async fn quic_to(
    relay: &TestRelay,
    fingerprint: [u8; 32],
    alpn: &[u8],
) -> Result<quinn::Connection, String> {
    let tls = herold_client::tls::pinned(fingerprint, alpn).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = herold_client::raw::client_endpoint(relay.addr).unwrap();
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(std::sync::Arc::new(crypto)),
            relay.addr,
            "localhost",
        )
        .unwrap();
    tokio::time::timeout(DEADLINE, connecting)
        .await
        .expect("the handshake ends in time")
        .map_err(|e| e.to_string())
}

/// What the relay tells its pages about WebTransport: the QUIC port and
/// the certificate hash to pin.
async fn webtransport_offer(relay: &TestRelay) -> (u16, [u8; 32]) {
    let (status, headers, body) = https(relay, Method::GET, "/v1/transports", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let port = u16::try_from(v["webtransport"]["port"].as_u64().unwrap()).unwrap();
    let hashes = v["webtransport"]["certificate_hashes"].as_array().unwrap();
    assert_eq!(hashes.len(), 1, "{v}");
    let hash = herold_client::tls::parse_fingerprint(hashes[0].as_str().unwrap()).unwrap();
    (port, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_the_quic_port_get_the_certificate_their_pages_pin() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (port, pinned) = webtransport_offer(&relay).await;
    assert_eq!(port, relay.addr.port());
    assert_ne!(pinned, relay.fingerprint);

    // HTTP/3 (a browser) gets the pinned certificate; a device its own.
    quic_to(&relay, pinned, b"h3").await.unwrap();
    let refused = quic_to(&relay, relay.fingerprint, b"h3").await.unwrap_err();
    assert!(refused.contains("certificate"), "{refused}");
    quic_to(&relay, relay.fingerprint, herold_proto::ALPN)
        .await
        .unwrap();
    assert!(quic_to(&relay, pinned, herold_proto::ALPN).await.is_err());

    // A page's pin outlives a restart of the relay.
    relay.stop().await;
    let relay = TestRelay::start(dir.path()).await;
    assert_eq!(webtransport_offer(&relay).await.1, pinned);
    quic_to(&relay, pinned, b"h3").await.unwrap();
}

/// An HTTP/3 request on a connection to `relay`; its status.
async fn h3_request(relay: &TestRelay, pinned: [u8; 32], req: Request<()>) -> StatusCode {
    let conn = quic_to(relay, pinned, b"h3").await.unwrap();
    let (mut driver, mut send) = h3::client::builder()
        .enable_extended_connect(true)
        .build::<_, _, Bytes>(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    let driving = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    let mut stream = send.send_request(req).await.unwrap();
    let resp = tokio::time::timeout(DEADLINE, stream.recv_response())
        .await
        .expect("answered in time")
        .unwrap();
    driving.abort();
    resp.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quic_port_opens_webtransport_for_the_relays_own_pages_only() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path()).await;
    let (port, pinned) = webtransport_offer(&relay).await;
    let connect = |path: &str, origin: &str| {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://localhost:{port}{path}"))
            .header(header::ORIGIN, origin)
            .body(())
            .unwrap();
        req.extensions_mut()
            .insert(h3::ext::Protocol::WEB_TRANSPORT);
        req
    };
    let own = format!("https://localhost:{}", relay.tcp_addr.unwrap().port());
    assert_eq!(
        h3_request(&relay, pinned, connect("/v1", "https://evil.example")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h3_request(&relay, pinned, connect("/elsewhere", &own)).await,
        StatusCode::NOT_FOUND
    );
    let plain = Request::get(format!("https://localhost:{port}/"))
        .body(())
        .unwrap();
    assert_eq!(
        h3_request(&relay, pinned, plain).await,
        StatusCode::NOT_FOUND,
        "the QUIC port serves no pages"
    );
}
