//! `storeline`: the one binary. `serve` runs the server; the other commands are clients of a
//! running server (`send`, `tail`), offline tools on a data directory (`keys`, `log verify`),
//! or generators and benchmarks (`gen`, `bench`).

/// mimalloc: allocation was a fifth of the ingest path's CPU with the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod deliveries_cmd;
mod replay;
mod table;
mod triggers_cmd;

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use storeline_server::Config;
use storeline_server::auth::{self, Scope};

#[derive(Parser)]
#[command(
    name = "storeline",
    version,
    about = "Storeline: a self-hosted, event-driven commerce and customer-engagement engine"
)]
struct Cli {
    /// Log format of `serve` and other commands: text or json.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "STORELINE_URL", default_value = "http://127.0.0.1:7700")]
    url: String,
    /// API key (ingest scope to send, read scope to tail).
    #[arg(long, env = "STORELINE_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded: log and keys in the data directory).
    Serve {
        /// Configuration file (TOML); see config/storeline.toml for every key.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory [default: ./storeline-data].
        #[arg(long)]
        data: Option<PathBuf>,
        /// Address to listen on [default: 127.0.0.1:7700].
        #[arg(long)]
        listen: Option<String>,
    },
    /// Send NDJSON events (one per line) from a file or stdin to a server.
    Send {
        /// File to send; `-` or nothing reads stdin.
        file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
        /// Events per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Requests in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// Follow the live event stream (Server-Sent Events), printing one JSON event per line.
    Tail {
        #[command(flatten)]
        client: ClientArgs,
        /// Only these types (comma-separated; `order.*` matches a prefix).
        #[arg(long = "type")]
        ty: Option<String>,
        /// Only this subject (customer).
        #[arg(long)]
        subject: Option<String>,
        /// Where to start: now, earliest, or an RFC 3339 time.
        #[arg(long, default_value = "now")]
        from: String,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Generate realistic synthetic commerce traffic as NDJSON (stdout) or send it to a server.
    Gen {
        /// Number of events.
        #[arg(long, short = 'n', default_value_t = 10_000)]
        events: u64,
        /// Seed: the same seed gives the same events.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 5_000)]
        customers: u32,
        #[arg(long, default_value_t = 500)]
        products: u32,
        /// Simulated start time (RFC 3339) [default: 2026-01-01T00:00:00Z].
        #[arg(long)]
        start: Option<String>,
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Share (0–1) of browsing visits made under an anonymous id that log in just before
        /// they order (`customer.identified` with `anonymous_id`).
        #[arg(long, default_value_t = 0.0)]
        anonymous_share: f64,
        /// Send to this server instead of printing (uses --key / STORELINE_API_KEY).
        #[arg(long)]
        to: Option<String>,
        #[arg(long, env = "STORELINE_API_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Inspect the log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Manage API keys in a data directory (works while the server runs).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Rebuild every view from the log into a fresh store and compare its digest with the live
    /// state's (run it with the server stopped: it opens the log).
    Replay(replay::ReplayArgs),
    /// Trigger files: check one, or backtest it against the stored log.
    Triggers {
        #[command(subcommand)]
        command: triggers_cmd::TriggersCommand,
    },
    /// Deliveries and the dead-letter queue: list, show with every attempt, redrive.
    Deliveries {
        #[command(subcommand)]
        command: deliveries_cmd::DeliveriesCommand,
    },
    /// Connectors: state, circuit and counts; re-enable one disabled for failing.
    Connectors {
        #[command(subcommand)]
        command: deliveries_cmd::ConnectorsCommand,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Read every segment and check every CRC, offset and timestamp; exit 1 on a problem.
    Verify {
        #[arg(long, default_value = "./storeline-data")]
        data: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (once) on stdout.
    Create {
        /// Scope(s): ingest (send events; the public storefront key), read, commands (place,
        /// cancel, refund orders, adjust stock: a shop backend's key), admin (grants all).
        #[arg(long, required = true, value_delimiter = ',')]
        scope: Vec<String>,
        /// A name to recognise the key by.
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, default_value = "./storeline-data")]
        data: PathBuf,
    },
    /// List keys (never the secrets).
    List {
        #[arg(long, default_value = "./storeline-data")]
        data: PathBuf,
    },
    /// Revoke a key by id (key_…) or prefix (sl_…).
    Revoke {
        id: String,
        #[arg(long, default_value = "./storeline-data")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration.
    Check { file: Option<PathBuf> },
    /// Print the commented default configuration.
    Default,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Start a server (fsync on) and drive it over HTTP: batches of 1000 and 100, single events
    /// from 64 connections, and latency at half the single-event maximum.
    Ingest(storeline_bench::ingest::IngestArgs),
    /// Run the engine in-process over a generated log: events/s through all views, replay
    /// rate, command latency, and oversell checks under 64 clients on hot SKUs.
    Engine(storeline_bench::engine::EngineArgs),
    /// Run the engine in-process with the starter trigger set: events/s, timer lateness at
    /// 10k fires/s, and memory with 1M pending timers.
    Triggers(storeline_bench::triggers::TriggersArgs),
    /// Start a server (fsync on) with a trigger that delivers every event to a local webhook
    /// receiver: end-to-end latency (ingest ack → received) at 1k and 10k events/s, and the
    /// most deliveries/s sustained.
    Delivery(storeline_bench::delivery::DeliveryArgs),
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Turns transparent huge pages off for this process (and the children it starts), unless
/// `MIMALLOC_ALLOW_THP` says otherwise. mimalloc asks for huge pages on its arenas; each first
/// touch of a 2 MiB region then makes the kernel zero all of it, and the engine's churn of
/// short-lived buffers kept faulting fresh ones in: `clear_page_erms` under
/// `do_huge_pmd_anonymous_page` was 16% of `bench engine`'s CPU. With 4 KiB pages, views and
/// replay ran 1.18× and 1.10× as fast on this machine (README, Performance).
fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // Process-wide (the flag is on the address space) and inherited by children.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off");
    }
}

fn main() {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    no_huge_pages();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Margin over tokio's 2 MiB: trigger files are compiled on workers and CEL's parser and
        // evaluator recurse. The CEL limits alone fit in 2 MiB (see triggers::cel::limits); this
        // is address space reserved per thread, not memory used.
        .thread_stack_size(8 << 20)
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve {
            config,
            data,
            listen,
        } => serve(config, data, listen).await,
        Command::Send {
            file,
            client,
            batch,
            concurrency,
        } => client::send(&client.url, client.key.as_deref(), file, batch, concurrency).await,
        Command::Tail {
            client,
            ty,
            subject,
            from,
            limit,
        } => {
            client::tail(
                &client.url,
                client.key.as_deref(),
                ty,
                subject,
                &from,
                limit,
            )
            .await
        }
        Command::Gen {
            events,
            seed,
            customers,
            products,
            start,
            currency,
            anonymous_share,
            to,
            key,
        } => {
            let start = match start {
                Some(s) => chrono::DateTime::parse_from_rfc3339(&s)
                    .with_context(|| format!("--start '{s}' is not an RFC 3339 time"))?
                    .with_timezone(&chrono::Utc),
                None => "2026-01-01T00:00:00Z".parse().context("default start")?,
            };
            storeline_event::Currency::parse(&currency)
                .map_err(|e| anyhow::anyhow!("--currency: {e}"))?;
            let cfg = storeline_bench::traffic::GenConfig {
                seed,
                customers,
                products,
                start,
                currency,
                anonymous_share,
            };
            let events_iter = storeline_bench::traffic::Generator::new(cfg).take(events as usize);
            match to {
                Some(url) => {
                    client::send_events(&url, key.as_deref(), events_iter, events, 1000, 4).await
                }
                None => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    for ev in events_iter {
                        serde_json::to_writer(&mut out, &ev)?;
                        out.write_all(b"\n")?;
                    }
                    out.flush()?;
                    Ok(())
                }
            }
        }
        Command::Log {
            command: LogCommand::Verify { data, json },
        } => verify(data, json),
        Command::Keys { command } => keys(command),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = Config::load(file.as_deref())?;
            config.validate()?;
            if let Some(source) = config.trigger_source().map_err(anyhow::Error::msg)?
                && let Err(problems) =
                    storeline_server::trigger_file::parse_file(&source, Some(&config.data_dir))
            {
                for p in &problems {
                    eprintln!("triggers: {p}");
                }
                anyhow::bail!("{} problem(s) in the trigger file", problems.len());
            }
            println!("{}", toml::to_string_pretty(&config)?);
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{}", storeline_server::config::DEFAULT_CONFIG_TOML);
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::Ingest(args),
        } => storeline_bench::ingest::ingest(args).await,
        Command::Bench {
            command: BenchCommand::Engine(args),
        } => storeline_bench::engine::run(args).await,
        Command::Bench {
            command: BenchCommand::Triggers(args),
        } => storeline_bench::triggers::run(args).await,
        Command::Bench {
            command: BenchCommand::Delivery(args),
        } => storeline_bench::delivery::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Triggers { command } => triggers_cmd::run(command).await,
        Command::Deliveries { command } => deliveries_cmd::run(command).await,
        Command::Connectors { command } => deliveries_cmd::run_connectors(command).await,
    }
}

async fn serve(
    config: Option<PathBuf>,
    data: Option<PathBuf>,
    listen: Option<String>,
) -> Result<()> {
    let mut cfg = Config::load(config.as_deref())?;
    if let Some(d) = data {
        cfg.data_dir = d;
    }
    if let Some(l) = listen {
        cfg.server.listen = l;
    }
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    };
    storeline_server::run(cfg, shutdown, |started| {
        let mut out = std::io::stdout().lock();
        if let Some(key) = &started.admin_key {
            let _ = writeln!(
                out,
                "\nCreated an admin API key for this new data directory. It is shown only once:\n\n    {key}\n\n\
                 Use it as `Authorization: Bearer <key>`; make narrower keys with `storeline keys create --scope ingest`.\n"
            );
        }
        let _ = writeln!(out, "storeline listening on http://{}", started.addr);
        let _ = out.flush();
    })
    .await?;
    Ok(())
}

fn verify(data: PathBuf, json: bool) -> Result<()> {
    let dir = data.join("log");
    if !dir.join("log.json").exists() {
        bail!(
            "no log in {} (expected {}/log.json)",
            data.display(),
            dir.display()
        );
    }
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("verifying {bar:30} {pos}/{len} segments")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = storeline_log::verify_dir(&dir, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:>9} {:>8} {:>12} {:>14} {:>10}  status",
            "partition", "segments", "records", "bytes", "torn tail"
        );
        for p in &report.partitions {
            let status = if p.problems.is_empty() {
                "ok".to_owned()
            } else {
                format!("{} problem(s)", p.problems.len())
            };
            println!(
                "{:>9} {:>8} {:>12} {:>14} {:>10}  {status}",
                p.partition, p.segments, p.records, p.bytes, p.torn_tail_bytes
            );
            for pr in &p.problems {
                println!(
                    "    {} at byte {} (offset {}): {}",
                    pr.segment.display(),
                    pr.position,
                    pr.offset,
                    pr.reason
                );
            }
        }
    }
    if !report.ok() {
        bail!("the log has corrupt batches (listed above)");
    }
    if !json {
        println!("every batch checksum is valid");
        if report.journal_batches > 0 {
            println!(
                "{} batch(es) are in the journal (log/journal.wal) and not yet in their segments; \
                 the next start writes them back",
                report.journal_batches
            );
        }
    }
    Ok(())
}

fn keys(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create { scope, name, data } => {
            let scopes = scope
                .iter()
                .map(|s| Scope::parse(s.trim()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(anyhow::Error::msg)?;
            let (record, secret) = auth::create_key(&data.join("keys.json"), &name, &scopes)?;
            println!("{secret}");
            eprintln!(
                "created {} with scopes {:?}; the key above is not stored and cannot be shown again",
                record.id, scopes
            );
            Ok(())
        }
        KeysCommand::List { data } => {
            let keys = auth::list_keys(&data.join("keys.json"))?;
            println!(
                "{:<32} {:<10} {:<22} {:<20} {:<20} name",
                "id", "prefix", "scopes", "created", "revoked"
            );
            for k in keys {
                let scopes: Vec<&str> = k.scopes.iter().map(|s| s.as_str()).collect();
                println!(
                    "{:<32} {:<10} {:<22} {:<20} {:<20} {}",
                    k.id,
                    k.prefix,
                    scopes.join(","),
                    k.created_at.format("%Y-%m-%d %H:%M:%S"),
                    k.revoked_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into()),
                    k.name
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { id, data } => {
            let k = auth::revoke_key(&data.join("keys.json"), &id)?;
            eprintln!(
                "revoked {} ({}); a running server stops accepting it within a second",
                k.id, k.prefix
            );
            Ok(())
        }
    }
}
