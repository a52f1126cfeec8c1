//! `storeline replay`: rebuild every view from the log into a fresh store and compare its digest
//! with the live state's.
//!
//! The rebuild goes exactly as far as the live store has committed per partition, so the two
//! digests describe the same log prefix and must be equal; a difference means the live views
//! drifted from what the log says (a bug), and the command exits 1.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use storeline_log::{EventLog, FileLog};
use storeline_server::{Config, LogBackend, StateBackend};
use storeline_state::{PostgresConfig, PostgresStore, SqliteStore, StateStore, Store};

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./storeline-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to build the SQLite copy [default: <data>/replay.db, removed afterwards].
    #[arg(long)]
    into: Option<PathBuf>,
    /// Keep the rebuilt store (SQLite file, or the `<schema>_replay` PostgreSQL schema).
    #[arg(long)]
    keep: bool,
    /// Records applied per transaction.
    #[arg(long, default_value_t = 32768)]
    batch: usize,
}

pub async fn run(args: ReplayArgs) -> Result<()> {
    let mut cfg = Config::load(args.config.as_deref())?;
    if let Some(d) = args.data {
        cfg.data_dir = d;
    }
    cfg.validate()?;
    let log = Arc::new(open_file_log(&cfg, "replay").await?);
    let live = storeline_server::open_store(&cfg)
        .await
        .context("cannot open the live state store")?;
    let live_offsets = live.offsets().await?;
    let mut until = BTreeMap::new();
    let mut unapplied = 0u64;
    for p in 0..log.partitions() {
        let end = log.bounds(p)?.end;
        let committed = live_offsets.get(&p).copied().unwrap_or(0);
        unapplied += end.saturating_sub(committed);
        if committed > 0 {
            until.insert(p, committed.min(end));
        }
    }
    let total: u64 = until.values().sum();
    eprintln!(
        "replaying {total} events from {} partition(s) into a fresh store{}",
        until.len(),
        if unapplied > 0 {
            format!(
                " ({unapplied} newer events are not in the live views yet; the server applies them when it starts)"
            )
        } else {
            String::new()
        }
    );
    let (fresh, cleanup) = fresh_store(&cfg, args.into, args.keep).await?;
    let fresh = Arc::new(fresh);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let engine_cfg = storeline_server::engine_config(&cfg);
    let done = storeline_engine::replay(
        Arc::clone(&log),
        Arc::clone(&fresh),
        &engine_cfg.projection,
        &until,
        args.batch,
        &|n| bar.set_position(n),
    )
    .await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let rebuilt = storeline_state::digest(&*fresh).await?;
    let current = storeline_state::digest(&live).await?;
    println!(
        "replayed {done} events in {secs:.2} s ({:.0} events/s)",
        done as f64 / secs.max(1e-9)
    );
    println!("rebuilt digest {rebuilt} ({} rows)", rebuilt.rows);
    println!("live    digest {current} ({} rows)", current.rows);
    fresh.close().await;
    live.close().await;
    cleanup.run(&cfg).await;
    let _ = log.close().await;
    if rebuilt != current {
        bail!("the rebuilt views differ from the live views");
    }
    println!("the rebuilt views equal the live views");
    Ok(())
}

/// Opens the data directory's file log for an offline command (`what` names it in errors). The
/// log is locked while a server runs on it, so this fails then, with a message saying so.
pub async fn open_file_log(cfg: &Config, what: &str) -> Result<FileLog> {
    if cfg.log.backend != LogBackend::File {
        bail!(
            "{what} reads the file log; log.backend is {:?}",
            cfg.log.backend
        );
    }
    let dir = cfg.log_dir();
    if !dir.join("log.json").exists() {
        bail!("there is no log in {} (is --data right?)", dir.display());
    }
    let file_cfg = cfg.log.file();
    tokio::task::spawn_blocking(move || FileLog::open(dir, file_cfg))
        .await?
        .context("cannot open the log (is a server running on this data directory? stop it first)")
}

/// What to remove after the comparison.
enum Cleanup {
    None,
    File(PathBuf),
    Schema(PostgresConfig),
}

impl Cleanup {
    async fn run(self, _cfg: &Config) {
        match self {
            Cleanup::None => {}
            Cleanup::File(p) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut s = p.clone().into_os_string();
                    s.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(s));
                }
            }
            Cleanup::Schema(pg) => {
                if let Ok(s) = PostgresStore::connect(&pg).await {
                    let _ = s.drop_schema().await;
                    s.close().await;
                }
            }
        }
    }
}

async fn fresh_store(cfg: &Config, into: Option<PathBuf>, keep: bool) -> Result<(Store, Cleanup)> {
    match cfg.state.backend {
        StateBackend::Sqlite => {
            let path = into.unwrap_or_else(|| cfg.data_dir.join("replay.db"));
            if path.exists() {
                if keep || path != cfg.data_dir.join("replay.db") {
                    bail!(
                        "{} exists; give another --into or remove it",
                        path.display()
                    );
                }
                Cleanup::File(path.clone()).run(cfg).await;
            }
            let store = SqliteStore::open(&path).await?;
            let cleanup = if keep {
                Cleanup::None
            } else {
                Cleanup::File(path)
            };
            Ok((Store::Sqlite(store), cleanup))
        }
        StateBackend::Postgres => {
            let pg = PostgresConfig {
                url: cfg.state.postgres.url.clone(),
                schema: format!("{}_replay", cfg.state.postgres.schema),
            };
            let old = PostgresStore::connect(&pg).await?;
            old.drop_schema().await?;
            old.close().await;
            let store = PostgresStore::connect(&pg).await?;
            let cleanup = if keep {
                Cleanup::None
            } else {
                Cleanup::Schema(pg)
            };
            Ok((Store::Postgres(store), cleanup))
        }
    }
}
