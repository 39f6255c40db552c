use super::*;
use clap::Parser;
use std::io::Write;

fn parse(args: &[&str]) -> Result<Config, ConfigError> {
    let mut v = vec!["herold-relay"];
    v.extend_from_slice(args);
    Config::from_args(Args::try_parse_from(v).unwrap())
}

#[test]
fn dev_defaults_are_valid() {
    let c = parse(&["--dev"]).unwrap();
    assert_eq!(c.listen.port(), 7300);
    assert_eq!(c.admin_listen.port(), 7301);
    assert_eq!(c.limits.max_devices_per_account, 10);
    assert_eq!(c.tls, TlsSource::DevSelfSigned);
}

#[test]
fn production_needs_a_certificate() {
    assert!(matches!(parse(&[]), Err(ConfigError::NoCertificate)));
    assert!(matches!(
        parse(&["--tls-cert", "c.pem"]),
        Err(ConfigError::HalfTls("tls-cert", "tls-key"))
    ));
}

#[test]
fn cql_settings_are_validated() {
    let c = parse(&["--dev"]).unwrap();
    assert!(c.cql.is_none());
    let c = parse(&[
        "--dev",
        "--cql-contact-points",
        "10.0.0.1:9042, 10.0.0.2:9042",
        "--cql-replication",
        "nts:muc1=3",
    ])
    .unwrap();
    let cql = c.cql.unwrap();
    assert_eq!(cql.contact_points, ["10.0.0.1:9042", "10.0.0.2:9042"]);
    assert_eq!(cql.keyspace, "herold");
    assert_eq!(
        cql.consistency,
        herold_store::cql::parse_consistency("LOCAL_QUORUM").unwrap()
    );
    assert_eq!(cql.replication.to_string(), "nts:muc1=3");
    assert!(cql.migrate);
    for (args, name) in [
        (&["--cql-consistency", "MOST"][..], "cql-consistency"),
        (&["--cql-replication", "simple:0"][..], "cql-replication"),
        (&["--cql-keyspace", "a-b"][..], "cql-keyspace"),
    ] {
        let mut v = vec!["--dev", "--cql-contact-points", "127.0.0.1:9042"];
        v.extend_from_slice(args);
        let e = parse(&v).unwrap_err();
        assert!(e.to_string().contains(name), "{e}");
    }
    let e = parse(&["--dev", "--cql-keyspace", "x"]).unwrap_err();
    assert!(e.to_string().contains("cql-contact-points"), "{e}");
    let e = parse(&["--dev", "--migrate-only"]).unwrap_err();
    assert!(e.to_string().contains("migrate-only"), "{e}");
}

/// Outside --dev the replication must be chosen, and a choice that can
/// lose acknowledged messages with one node needs
/// --cql-accept-weak-durability (and is then warned about); --dev keeps
/// the one-node default.
#[test]
fn production_cql_durability_is_explicit() {
    let cql = ["--migrate-only", "--cql-contact-points", "10.0.0.1:9042"];
    let e = parse(&cql).unwrap_err();
    assert!(e.to_string().contains("cql-replication"), "{e}");
    assert!(e.to_string().contains("nts:<datacenter>=3"), "{e}");

    let mut strong = cql.to_vec();
    strong.extend(["--cql-replication", "nts:muc1=3"]);
    let c = parse(&strong).unwrap();
    assert!(c.cql_weak_durability.is_empty());

    for weak in [
        &["--cql-replication", "simple:1"][..],
        &[
            "--cql-replication",
            "nts:muc1=3",
            "--cql-consistency",
            "ONE",
        ][..],
    ] {
        let mut v = cql.to_vec();
        v.extend_from_slice(weak);
        let e = parse(&v).unwrap_err();
        assert!(e.to_string().contains("cql-accept-weak-durability"), "{e}");
        v.push("--cql-accept-weak-durability");
        let c = parse(&v).unwrap();
        assert_eq!(
            c.cql_weak_durability.len(),
            1,
            "{:?}",
            c.cql_weak_durability
        );
    }

    let c = parse(&["--dev", "--cql-contact-points", "127.0.0.1:9042"]).unwrap();
    assert_eq!(c.cql.unwrap().replication.to_string(), "simple:1");
    assert!(c.cql_weak_durability.is_empty());
}

/// Outside --dev nobody is admin by being local: the admin API needs
/// operators even on loopback.
#[test]
fn production_admin_needs_operators_on_loopback_too() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, "").unwrap();
    std::fs::write(&key, "").unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let e = parse(&["--tls-cert", cert, "--tls-key", key]).unwrap_err();
    assert!(e.to_string().contains("admin-operators-file"), "{e}");
    assert!(e.to_string().contains("loopback too"), "{e}");
    let token = dir.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    let c = parse(&[
        "--tls-cert",
        cert,
        "--tls-key",
        key,
        "--admin-token-file",
        token.to_str().unwrap(),
    ])
    .unwrap();
    assert!(c.admin_listen.ip().is_loopback());
    assert!(parse(&["--dev"]).unwrap().admin_token.is_none());
}

#[test]
fn bad_values_are_named() {
    let e = parse(&["--dev", "--max-in-flight", "0"]).unwrap_err();
    assert!(e.to_string().contains("max-in-flight"), "{e}");
    let e = parse(&[
        "--dev",
        "--max-ciphertext-bytes",
        "300000",
        "--max-frame-bytes",
        "300000",
    ])
    .unwrap_err();
    assert!(e.to_string().contains("max-ciphertext-bytes"), "{e}");
    let e = parse(&["--dev", "--node-id", "a b"]).unwrap_err();
    assert!(e.to_string().contains("node-id"), "{e}");
    let e = parse(&["--dev", "--admin-listen", "0.0.0.0:7301"]).unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");
    // A token alone is not enough off loopback: it would travel in the clear.
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "0123456789abcdef0123").unwrap();
    let token = f.path().to_str().unwrap();
    let e = parse(&[
        "--dev",
        "--admin-listen",
        "0.0.0.0:7301",
        "--admin-token-file",
        token,
    ])
    .unwrap_err();
    assert!(e.to_string().contains("admin-tls-cert"), "{e}");
    let c = parse(&[
        "--dev",
        "--admin-listen",
        "0.0.0.0:7301",
        "--admin-token-file",
        token,
        "--admin-tls-cert",
        "c.pem",
        "--admin-tls-key",
        "k.pem",
    ])
    .unwrap();
    assert!(c.admin_tls.is_some());
}

#[test]
fn telemetry_settings_have_defaults_and_are_validated() {
    let c = parse(&["--dev"]).unwrap();
    assert_eq!(c.metrics_listen, SocketAddr::from(([127, 0, 0, 1], 7302)));
    assert_eq!(c.log_format, LogFormat::Text);
    assert!(
        !c.log_client_addresses,
        "client addresses stay out of logs by default"
    );
    assert_eq!(c.otlp_endpoint, None);
    assert_eq!(c.trace_sample_ratio, DEFAULT_TRACE_SAMPLE_RATIO);
    let c = parse(&[
        "--dev",
        "--log-format",
        "JSON",
        "--otlp-endpoint",
        "http://collector:4317",
        "--trace-sample-ratio",
        "1",
        "--metrics-listen",
        "0.0.0.0:9100",
        "--log-client-addresses",
    ])
    .unwrap();
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.otlp_endpoint.as_deref(), Some("http://collector:4317"));
    assert_eq!(c.trace_sample_ratio, 1.0);
    assert_eq!(c.metrics_listen.port(), 9100);
    assert!(c.log_client_addresses);
    for (args, name) in [
        (&["--log-format", "xml"][..], "log-format"),
        (&["--trace-sample-ratio", "1.5"][..], "trace-sample-ratio"),
        (&["--trace-sample-ratio=-0.1"][..], "trace-sample-ratio"),
        (&["--otlp-endpoint", "collector:4317"][..], "otlp-endpoint"),
        (
            &["--drain-reconnect-spread-ms", "10001"][..],
            "drain-reconnect-spread-ms",
        ),
        (
            &["--udp-recv-buffer-bytes", "1000"][..],
            "udp-recv-buffer-bytes",
        ),
        (&["--udp-sockets", "0"][..], "udp-sockets"),
        (&["--udp-sockets", "65"][..], "udp-sockets"),
        (&["--fan-out-rate", "999"][..], "fan-out-rate"),
        (&["--write-timeout-secs", "0"][..], "write-timeout-secs"),
        (&["--write-timeout-secs", "86401"][..], "write-timeout-secs"),
        (
            &["--metrics-listen", "127.0.0.1:7301"][..],
            "metrics-listen",
        ),
    ] {
        let mut v = vec!["--dev"];
        v.extend_from_slice(args);
        let e = parse(&v).unwrap_err();
        assert!(e.to_string().contains(name), "{args:?}: {e}");
    }
}

#[test]
fn admission_limits_have_defaults_and_are_validated() {
    let c = parse(&["--dev"]).unwrap();
    let l = &c.limits;
    assert_eq!(l.max_unauthenticated, 10_000);
    assert_eq!(l.max_unauthenticated_per_address, 256);
    assert_eq!(l.handshake_rate_per_address, 200);
    assert_eq!(l.retry_above, 1_000);
    assert_eq!(l.auth_rate_per_account, 5);
    assert_eq!(l.enroll_failure_rate, 2);
    assert_eq!(l.mls_restarts_per_hour, 6);
    assert_eq!(l.purge_interval_secs, 30);
    let c = parse(&[
        "--dev",
        "--max-unauthenticated",
        "50",
        "--max-unauthenticated-per-address",
        "5",
        "--handshake-rate-per-address",
        "7",
        "--retry-above",
        "0",
        "--auth-rate-per-account",
        "2",
        "--enroll-failure-rate",
        "3",
        "--purge-interval-secs",
        "5",
    ])
    .unwrap();
    assert_eq!(c.limits.purge_interval_secs, 5);
    let l = &c.limits;
    assert_eq!(
        (
            l.max_unauthenticated,
            l.max_unauthenticated_per_address,
            l.handshake_rate_per_address,
            l.retry_above,
            l.auth_rate_per_account,
            l.enroll_failure_rate
        ),
        (50, 5, 7, 0, 2, 3)
    );
    for name in [
        "max-unauthenticated",
        "max-unauthenticated-per-address",
        "handshake-rate-per-address",
        "auth-rate-per-account",
        "enroll-failure-rate",
        "max-pending-appends",
        "mls-restarts-per-hour",
        "purge-interval-secs",
    ] {
        let flag = format!("--{name}");
        let e = parse(&["--dev", &flag, "0"]).unwrap_err();
        assert!(e.to_string().contains(name), "{name}: {e}");
    }
}

#[test]
fn file_is_overridden_by_flags() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "dev = true\nnode_id = \"from-file\"\nmax_in_flight = 7").unwrap();
    let path = f.path().to_str().unwrap();
    let c = parse(&["--config", path, "--node-id", "from-flag"]).unwrap();
    assert_eq!(c.node_id, "from-flag");
    assert_eq!(c.limits.max_in_flight, 7);
    assert!(c.dev);
}

#[test]
fn operators_file_is_checked() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        f,
        "[[operator]]\nname = \"ops\"\nrole = \"org-admin\"\ntoken = \"0123456789abcdef\"\n\
         [[operator]]\nname = \"lead\"\nrole = \"group-admin\"\ngroups = [\"g1\"]\ntoken = \"fedcba9876543210\""
    )
    .unwrap();
    let c = parse(&[
        "--dev",
        "--admin-operators-file",
        f.path().to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(c.admin_operators.len(), 2);
    assert_eq!(c.admin_operators[1].groups, ["g1"]);
    let mut bad = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        bad,
        "[[operator]]\nname = \"lead\"\nrole = \"group-admin\"\ntoken = \"fedcba9876543210\""
    )
    .unwrap();
    let e = parse(&[
        "--dev",
        "--admin-operators-file",
        bad.path().to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("no groups"), "{e}");
}

#[test]
fn unknown_file_keys_are_errors() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "dev = true\nmax_in_fligth = 7").unwrap();
    let e = parse(&["--config", f.path().to_str().unwrap()]).unwrap_err();
    assert!(e.to_string().contains("max_in_fligth"), "{e}");
}

#[test]
fn the_tcp_fallback_is_on_by_default_and_can_be_moved_or_turned_off() {
    let c = parse(&["--dev"]).unwrap();
    assert_eq!(c.tcp_listen, Some(None), "on, at the QUIC address");
    let c = parse(&["--dev", "--tcp-listen", "0.0.0.0:443"]).unwrap();
    assert_eq!(c.tcp_listen, Some(Some("0.0.0.0:443".parse().unwrap())));
    let c = parse(&["--dev", "--no-tcp-fallback"]).unwrap();
    assert_eq!(c.tcp_listen, None);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "dev = true\ntcp_fallback = false").unwrap();
    let c = parse(&["--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.tcp_listen, None);
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "dev = true\ntcp_listen = \"127.0.0.1:8443\"").unwrap();
    let c = parse(&["--config", f.path().to_str().unwrap()]).unwrap();
    assert_eq!(c.tcp_listen, Some(Some("127.0.0.1:8443".parse().unwrap())));
}

#[test]
fn web_names_and_origins_are_written_as_a_browser_writes_them() {
    let c = parse(&[
        "--dev",
        "--web-names",
        "Relay.City.Example:443, relay.city.example:7300",
        "--web-origins",
        "https://Messenger.City.Example",
    ])
    .unwrap();
    assert_eq!(
        c.web_names,
        ["relay.city.example", "relay.city.example:7300"]
    );
    assert_eq!(c.web_origins, ["https://messenger.city.example"]);
    assert!(c.web_root.is_none(), "no web messenger unless asked");
    for (flag, bad) in [
        ("--web-names", "https://relay.example"),
        ("--web-names", "relay example"),
        ("--web-origins", "relay.example"),
        ("--web-origins", "https://relay.example/app"),
    ] {
        let e = parse(&["--dev", flag, bad]).unwrap_err();
        assert!(e.to_string().contains(&flag[2..]), "{flag} {bad}: {e}");
    }
    let e = parse(&["--dev", "--no-tcp-fallback", "--web-root", "web"]).unwrap_err();
    assert!(e.to_string().contains("web-root"), "{e}");
}
