//! What the connector's integration tests share: the real receivers they run (an HTTP recorder,
//! the Standard Webhooks receiver, an SMTP server, a Kafka-protocol broker), a free port, and a
//! connector built from a `[[connector]]` table exactly as the server builds one.
// Each test file uses only some of this.
#![allow(dead_code)]

pub mod http;
pub mod kafka;
pub mod smtp;
pub mod webhook;

use storeline_connector::{Built, config};

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A connector from one `[[connector]]` table: checked by `config::parse`, then built.
pub fn build(src: &str) -> Built {
    let table: toml::Table = toml::from_str(src).expect("a TOML table");
    let def =
        config::parse(&table, "connector[0]").unwrap_or_else(|p| panic!("the table checks: {p:?}"));
    Built::build(&def).unwrap_or_else(|e| panic!("the connector builds: {e}"))
}
