//! `storeline deliveries …` and `storeline connectors …`: the dead-letter queue and the
//! connectors' state from the command line, through the server's API (the same endpoints a
//! script would call).

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::ClientArgs;

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
            if !json {
                println!(
                    "{:<29} {:<12} {:<10} {:>8} {:<24} {:<24} last error",
                    "id", "connector", "status", "attempts", "created", "customer"
                );
            }
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
                        return Ok(());
                    }
                    printed += 1;
                    if json {
                        println!("{d}");
                    } else {
                        println!(
                            "{:<29} {:<12} {:<10} {:>8} {:<24} {:<24} {}",
                            d["id"].as_str().unwrap_or(""),
                            d["connector"].as_str().unwrap_or(""),
                            d["status"].as_str().unwrap_or(""),
                            d["attempts"],
                            d["created_at"].as_str().unwrap_or(""),
                            d["customer"].as_str().unwrap_or("-"),
                            d["last_error"].as_str().unwrap_or("")
                        );
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
            println!(
                "{:<16} {:<8} {:<9} {:<10} {:>9} {:>9} {:>10} {:>7}",
                "name", "type", "state", "circuit", "in_flight", "pending", "delivered", "dead"
            );
            for c in v["connectors"].as_array().into_iter().flatten() {
                println!(
                    "{:<16} {:<8} {:<9} {:<10} {:>9} {:>9} {:>10} {:>7}",
                    c["name"].as_str().unwrap_or(""),
                    c["type"].as_str().unwrap_or("?"),
                    c["state"].as_str().unwrap_or(""),
                    c["circuit"].as_str().unwrap_or(""),
                    c["in_flight"],
                    c["pending"],
                    c["delivered"],
                    c["dead"]
                );
            }
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
