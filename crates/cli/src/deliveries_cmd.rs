//! `storeline deliveries …` and `storeline connectors …`: the dead-letter queue and the
//! connectors' state from the command line, through the server's API (the same endpoints a
//! script would call).

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::ClientArgs;
use crate::table::{self, Align};

#[derive(Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, oldest first (a table; `--json` for one JSON object per line).
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// pending, delivered or dead (the dead-letter queue).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        /// Created at or after (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Created at or before (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Most rows to print (pages are followed).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One delivery with every attempt.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send dead deliveries again: the given ids, or every dead one matching the filter.
    Redrive {
        /// Delivery ids (`dlv_…`); without ids, the filter chooses.
        ids: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Needed to redrive the whole dead-letter queue (no ids and no filter).
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
pub enum ConnectorsCommand {
    /// Each connector's state, circuit and counts.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-enable a connector that was disabled for failing too long.
    Enable {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// One API call with a key of `scope`; a non-2xx answer becomes the server's error message.
async fn call(
    client: &ClientArgs,
    scope: &str,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
    body: Option<Value>,
) -> Result<Value> {
    let url = format!("{}{path}", client.url.trim_end_matches('/'));
    let key = crate::client::need_key(client.key.as_deref(), scope)?;
    let mut req = crate::client::client()?
        .request(method, &url)
        .query(query)
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is `storeline serve` running?"))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let msg = v["error"]["message"].as_str().unwrap_or("no details");
        bail!("{path}: {status}: {msg}");
    }
    Ok(v)
}

const DELIVERY_COLUMNS: &[(&str, Align)] = &[
    ("id", Align::Left),
    ("connector", Align::Left),
    ("status", Align::Left),
    ("attempts", Align::Right),
    ("created", Align::Left),
    ("customer", Align::Left),
    ("last error", Align::Left),
];

/// A `GET /v1/deliveries` entry as a row of [`DELIVERY_COLUMNS`].
fn delivery_row(d: &Value) -> Vec<String> {
    [
        "id",
        "connector",
        "status",
        "attempts",
        "created_at",
        "customer",
        "last_error",
    ]
    .iter()
    .map(|k| match (*k, &d[*k]) {
        ("last_error", Value::Null) => String::new(),
        (_, v) => table::cell(v),
    })
    .collect()
}

const CONNECTOR_COLUMNS: &[(&str, Align)] = &[
    ("name", Align::Left),
    ("type", Align::Left),
    ("state", Align::Left),
    ("circuit", Align::Left),
    ("in_flight", Align::Right),
    ("pending", Align::Right),
    ("delivered", Align::Right),
    ("dead", Align::Right),
];

/// A `GET /v1/connectors` entry as a row of [`CONNECTOR_COLUMNS`].
fn connector_row(c: &Value) -> Vec<String> {
    [
        "name",
        "type",
        "state",
        "circuit",
        "in_flight",
        "pending",
        "delivered",
        "dead",
    ]
    .iter()
    .map(|k| table::cell(&c[*k]))
    .collect()
}

pub async fn run(cmd: DeliveriesCommand) -> Result<()> {
    match cmd {
        DeliveriesCommand::List {
            client,
            status,
            connector,
            customer,
            from,
            to,
            limit,
            json,
        } => {
            let mut q: Vec<(&str, String)> = [
                ("status", status),
                ("connector", connector),
                ("customer", customer),
                ("from", from),
                ("to", to),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            q.push(("limit", limit.min(1000).to_string()));
            let mut printed = 0;
            // The table is printed at the end, its columns as wide as their widest value.
            let mut rows: Vec<Vec<String>> = Vec::new();
            loop {
                let page = call(
                    &client,
                    "read",
                    reqwest::Method::GET,
                    "/v1/deliveries",
                    &q,
                    None,
                )
                .await?;
                for d in page["deliveries"].as_array().into_iter().flatten() {
                    if printed == limit {
                        break;
                    }
                    printed += 1;
                    if json {
                        println!("{d}");
                    } else {
                        rows.push(delivery_row(d));
                    }
                }
                match page["next"].as_str() {
                    Some(next) if printed < limit => {
                        q.retain(|(k, _)| *k != "after");
                        q.push(("after", next.to_owned()));
                    }
                    _ => break,
                }
            }
            if !json {
                print!("{}", table::render(DELIVERY_COLUMNS, &rows));
                eprintln!("{printed} deliveries");
            }
            Ok(())
        }
        DeliveriesCommand::Show { id, client } => {
            let v = call(
                &client,
                "read",
                reqwest::Method::GET,
                &format!("/v1/deliveries/{id}"),
                &[],
                None,
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        DeliveriesCommand::Redrive {
            ids,
            client,
            connector,
            customer,
            from,
            to,
            all,
        } => {
            let filtered =
                connector.is_some() || customer.is_some() || from.is_some() || to.is_some();
            let body = if !ids.is_empty() {
                if filtered {
                    bail!(
                        "give delivery ids or a filter (--connector, --customer, --from, --to), not both"
                    );
                }
                json!({ "ids": ids })
            } else if filtered || all {
                json!({ "connector": connector, "customer": customer, "from": from, "to": to })
            } else {
                bail!(
                    "name the deliveries to redrive: ids, a filter (--connector, --customer, --from, --to), or --all for the whole dead-letter queue"
                );
            };
            let v = call(
                &client,
                "admin",
                reqwest::Method::POST,
                "/v1/deliveries/redrive",
                &[],
                Some(body),
            )
            .await?;
            println!("redriven: {}", v["redriven"]);
            Ok(())
        }
    }
}

pub async fn run_connectors(cmd: ConnectorsCommand) -> Result<()> {
    match cmd {
        ConnectorsCommand::List { client } => {
            let v = call(
                &client,
                "read",
                reqwest::Method::GET,
                "/v1/connectors",
                &[],
                None,
            )
            .await?;
            let rows: Vec<Vec<String>> = v["connectors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(connector_row)
                .collect();
            print!("{}", table::render(CONNECTOR_COLUMNS, &rows));
            Ok(())
        }
        ConnectorsCommand::Enable { name, client } => {
            let v = call(
                &client,
                "admin",
                reqwest::Method::POST,
                &format!("/v1/connectors/{name}/enable"),
                &[],
                None,
            )
            .await?;
            println!(
                "{name}: enabled{}",
                if v["was_disabled"] == true {
                    " (it was disabled)"
                } else {
                    " (it was not disabled)"
                }
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The columns line up whatever the lengths of ids, connector names and customers.
    #[test]
    fn the_deliveries_table_lines_up() {
        let rows: Vec<Vec<String>> = [
            json!({ "id": "dlv_0123456789abcdef01234567", "connector": "a-long-connector-name", "status": "dead", "attempts": 12, "created_at": "2026-03-02T10:00:00.000Z", "customer": "cus-1", "last_error": "http 400" }),
            json!({ "id": "dlv_1", "connector": "sms", "status": "delivered", "attempts": 1, "created_at": "2026-03-02T10:00:01.000Z", "customer": null, "last_error": null }),
        ]
        .iter()
        .map(delivery_row)
        .collect();
        let text = table::render(DELIVERY_COLUMNS, &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Each column starts where the header's does.
        for (header, values) in [
            ("connector", ["a-long-connector-name", "sms"]),
            ("status", ["dead", "delivered"]),
            (
                "created",
                ["2026-03-02T10:00:00.000Z", "2026-03-02T10:00:01.000Z"],
            ),
            ("customer", ["cus-1", "-"]),
        ] {
            let at = lines[0].find(header).unwrap();
            assert_eq!(lines[1].rfind(values[0]), Some(at), "{header}:\n{text}");
            assert_eq!(lines[2].rfind(values[1]), Some(at), "{header}:\n{text}");
        }
        // Numbers end under the end of their header.
        let end = lines[0].find("attempts").unwrap() + "attempts".len();
        assert_eq!(&lines[1][end - 2..end], "12", "{text}");
        assert_eq!(&lines[2][end - 1..end], "1", "{text}");
        assert!(
            lines[2].ends_with('-'),
            "no trailing blanks: {:?}",
            lines[2]
        );
    }
}
