//! The trigger file's lifecycle, in one place: checked with its connectors ([`parse_file`]:
//! secrets resolved, every problem of both), installed by appending one `storeline.triggers`
//! record to every partition ([`install`]; at start from the config, [`install_configured`],
//! only when its content changed), read back as the file in force ([`current_source`],
//! [`current_set`]), and its connectors handed to the delivery worker ([`installed_connectors`]
//! at start, [`reconfigure`] after a `PUT /v1/triggers`).
//!
//! Each partition's writer switches at the position of its record, so replay and backtest see
//! the same switch, and runs in flight keep the version they started with.

use storeline_connector::{ConnectorDef, secrets};
use storeline_engine::triggers::{self, TriggerSet};
use storeline_log::EventLog;

use crate::AppState;
use crate::error::ApiError;
use crate::http::views::{engine, internal};

/// Appends `set` to every partition and waits (up to `engine.read_wait`) until each applied it.
/// Returns whether all did in time.
pub(crate) async fn install(state: &AppState, set: &TriggerSet) -> Result<bool, ApiError> {
    let mut positions = Vec::new();
    for p in 0..state.log.partitions() {
        let acks = crate::ingest::store_routed(state, vec![triggers::install_event(set)], Some(p))
            .await
            .map_err(|e| {
                ApiError::unavailable(format!(
                    "the trigger file could not be stored: {}",
                    e.message
                ))
            })?;
        positions.extend(acks.iter().map(|a| (a.partition, a.offset)));
    }
    let engine = engine(state)?;
    for (p, o) in positions {
        if !engine
            .wait_applied(p, o, state.config.engine.read_wait)
            .await
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// At start: installs the configured trigger file if its content changed since it was last
/// installed from the config (so a file sent over the API stays until the config changes).
pub async fn install_configured(state: &AppState) -> Result<(), String> {
    let Some(source) = state.config.trigger_source()? else {
        return Ok(());
    };
    let data_dir = &state.config.data_dir;
    let source = crate::secrets::seal(data_dir, &source)?;
    let (set, _) = parse_file(&source, Some(data_dir)).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        format!("the trigger file has problems:\n{}", lines.join("\n"))
    })?;
    let marker = state.config.data_dir.join("triggers.installed");
    let previous = std::fs::read_to_string(&marker).unwrap_or_default();
    if previous.trim() == set.version {
        tracing::info!(
            version = set.version,
            "the configured trigger file is unchanged; the installed one stays"
        );
        return Ok(());
    }
    if !install(state, &set).await.map_err(|e| e.message)? {
        tracing::warn!("the trigger file is stored but not every partition applied it yet");
    }
    std::fs::write(&marker, &set.version)
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    tracing::info!(
        version = set.version,
        triggers = set.triggers.len(),
        "trigger file from the config installed"
    );
    Ok(())
}

/// The source of the trigger file in force (partition 0's).
pub(crate) async fn current_source(state: &AppState) -> Result<Option<String>, ApiError> {
    let engine = engine(state)?;
    let current = triggers::read::current(&*engine.store)
        .await
        .map_err(internal)?;
    Ok(current.into_iter().next().map(|(_, d)| d.source))
}

/// The trigger file in force (partition 0's, which all reach once they applied it).
pub(crate) async fn current_set(state: &AppState) -> Result<Option<TriggerSet>, ApiError> {
    Ok(current_source(state)
        .await?
        .and_then(|source| TriggerSet::parse(&source).ok()))
}

/// A trigger file with its connectors checked too, their secrets resolved (references looked
/// up, `enc:v1:` values opened with `data_dir`'s key): every problem of both, or both parsed.
pub fn parse_file(
    source: &str,
    data_dir: Option<&std::path::Path>,
) -> Result<(TriggerSet, Vec<ConnectorDef>), Vec<storeline_engine::triggers::Problem>> {
    let set = TriggerSet::parse(source);
    let tables = match &set {
        Ok(s) => s.connectors.clone(),
        // The connectors are checked even when a trigger is wrong, so one round shows all.
        Err(_) => toml::from_str::<toml::Table>(source)
            .ok()
            .and_then(|t| t.get("connector").cloned())
            .and_then(|c| c.try_into::<Vec<toml::Table>>().ok())
            .unwrap_or_default(),
    };
    let key = crate::secrets::key_reader(data_dir);
    let defs = secrets::reveal_all(&tables, &key, &secrets::Process)
        .and_then(|tables| storeline_connector::config::parse_all(&tables))
        .map_err(|ps| {
            ps.into_iter()
                .map(|p| storeline_engine::triggers::Problem {
                    at: p.at,
                    message: p.message,
                })
                .collect::<Vec<_>>()
        });
    match (set, defs) {
        (Ok(s), Ok(d)) => Ok((s, d)),
        (Err(mut a), Err(b)) => {
            a.extend(b);
            Err(a)
        }
        (Err(a), Ok(_)) | (Ok(_), Err(a)) => Err(a),
    }
}

/// The connectors of the installed trigger file, secrets resolved. One whose secrets cannot be
/// resolved now (a variable missing from this start's environment) is left out and logged: its
/// deliveries wait, as for one that cannot be built, and the others run.
pub(crate) fn installed_connectors(source: &str, data_dir: &std::path::Path) -> Vec<ConnectorDef> {
    let tables = match TriggerSet::parse(source) {
        Ok(set) => set.connectors,
        Err(problems) => {
            for p in &problems {
                tracing::error!(problem = %p, "the installed trigger file has problems; no connector is configured");
            }
            return Vec::new();
        }
    };
    let key = crate::secrets::key_reader(Some(data_dir));
    let mut defs = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let at = format!("connector[{i}]");
        match secrets::reveal(t, &at, &key, &secrets::Process)
            .and_then(|t| storeline_connector::config::parse(&t, &at))
        {
            Ok(d) => defs.push(d),
            Err(problems) => {
                for p in &problems {
                    tracing::error!(problem = %p, "connector left out: its deliveries wait");
                }
            }
        }
    }
    defs
}

/// Hands new connector definitions to the worker; problems building them are logged (the
/// definitions were checked already, so these are files or clients that failed).
pub(crate) async fn reconfigure(state: &AppState, defs: Vec<ConnectorDef>) {
    let Ok(w) = state.delivery_worker() else {
        return;
    };
    match w.configure(defs).await {
        Ok(errors) => {
            for (name, e) in errors {
                tracing::error!(
                    connector = name,
                    error = e,
                    "connector cannot be built; its deliveries wait"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot reconfigure the delivery worker"),
    }
}
