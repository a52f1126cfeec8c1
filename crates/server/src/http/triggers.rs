//! Triggers over HTTP: read and replace the trigger file (`GET/PUT /v1/triggers`; how a file is
//! checked, installed and handed to the worker is `trigger_file.rs`), a customer's journeys,
//! and aggregate values.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use storeline_engine::triggers::{self, TriggerSet};

use crate::SharedState;
use crate::auth::Scope;
use crate::error::ApiError;
use crate::http::views::{Q, customer_read, engine, internal, not_found, now_ms, view_read};

/// `GET /v1/triggers`: the file in force, each trigger's version and counters, and the runs
/// still on older versions.
pub async fn get_triggers(
    State(state): State<SharedState>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (engine, _) = view_read(&state, &headers, "GET /v1/triggers", q).await?;
    let current = triggers::read::current(&*engine.store)
        .await
        .map_err(internal)?;
    let stats = triggers::read::stats(&*engine.store)
        .await
        .map_err(internal)?;
    let Some((_, def)) = current.first() else {
        return Ok(Json(
            json!({ "version": null, "source": null, "triggers": [], "stats": stats }),
        )
        .into_response());
    };
    let set = TriggerSet::parse(&def.source).unwrap_or_default();
    // Admin keys get the file as stored: secrets sealed (`enc:v1:`) or references, never
    // plain text (except in a file stored before sealing existed).
    let admin = state
        .keys
        .authorize(&headers, Scope::Admin, "GET /v1/triggers")
        .is_ok();
    let source = if admin {
        def.source.clone()
    } else {
        crate::secrets::redact_source(&def.source)
    };
    let list: Vec<Value> = set
        .triggers
        .iter()
        .map(|t| {
            let older: Vec<Value> = stats
                .iter()
                .filter(|(id, s)| id.starts_with(&format!("{}@", t.name)) && **id != t.id() && s.get("active").copied().unwrap_or(0) > 0)
                .map(|(id, s)| json!({ "version": id.split('@').nth(1), "active_runs": s.get("active") }))
                .collect();
            json!({
                "name": t.name, "version": t.version, "on": t.on, "description": t.def.description,
                "counts": stats.get(&t.id()).cloned().unwrap_or_default(),
                "older_versions_running": older,
            })
        })
        .collect();
    let partitions: Vec<Value> = current
        .iter()
        .map(|(p, d)| json!({ "partition": p, "version": d.version }))
        .collect();
    Ok(Json(json!({
        "version": def.version, "source": source, "secrets_redacted": !admin, "triggers": list,
        "aggregates": set.aggregates.iter().map(|a| json!({ "name": a.name, "on": a.on, "window_ms": a.window_ms, "fn": a.func })).collect::<Vec<_>>(),
        "partitions": partitions, "stats": stats,
    }))
    .into_response())
}

/// `PUT /v1/triggers` (admin): checks and installs a whole trigger file (TOML body).
pub async fn put_triggers(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = state
        .authorized_body(&headers, body, Scope::Admin, "PUT /v1/triggers", 1 << 20)
        .await?;
    let source = String::from_utf8(bytes.to_vec()).map_err(|_| {
        ApiError::bad_request("invalid_body", "the trigger file must be UTF-8 TOML")
    })?;
    // A PUT without a body (`curl -X PUT` without --data-binary) would remove every trigger.
    if source.trim().is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request body is empty: send the whole trigger file (a file with no [[trigger]] \
             table, e.g. a comment, removes every trigger)",
        ));
    }
    // Plain-text secrets are sealed before anything is stored; the connectors are built from
    // the sealed text, as they will be at the next start.
    let data_dir = &state.config.data_dir;
    let source = crate::secrets::seal(data_dir, &source).map_err(|e| {
        tracing::error!(error = e, "cannot seal the trigger file's secrets");
        ApiError::unavailable(
            "the connector secrets cannot be sealed now (see the server log); retry",
        )
    })?;
    let (set, connectors) =
        crate::trigger_file::parse_file(&source, Some(data_dir)).map_err(|problems| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_triggers",
                format!(
                    "the trigger file has {} problem(s); nothing was changed",
                    problems.len()
                ),
            )
            .with_details(json!({ "problems": problems }))
        })?;
    let engine = engine(&state)?;
    let before = crate::trigger_file::current_set(&state).await?;
    let stats = triggers::read::stats(&*engine.store)
        .await
        .map_err(internal)?;
    let mut replaced = Vec::new();
    let mut removed = Vec::new();
    let mut waiting_old = 0;
    if let Some(old) = &before {
        for t in &old.triggers {
            let active = triggers::read::active(&stats, &t.id());
            match set.trigger(&t.name) {
                Some(n) if n.version == t.version => {}
                Some(n) => {
                    waiting_old += active;
                    replaced.push(json!({ "name": t.name, "old_version": t.version, "new_version": n.version, "runs_on_old_version": active }));
                }
                None => {
                    waiting_old += active;
                    removed.push(json!({ "name": t.name, "version": t.version, "runs_on_old_version": active }));
                }
            }
        }
    }
    let applied = crate::trigger_file::install(&state, &set).await?;
    crate::trigger_file::reconfigure(&state, connectors).await;
    let added: Vec<&str> = set
        .triggers
        .iter()
        .filter(|t| before.as_ref().is_none_or(|b| b.trigger(&t.name).is_none()))
        .map(|t| t.name.as_str())
        .collect();
    tracing::info!(
        version = set.version,
        replaced = replaced.len(),
        removed = removed.len(),
        runs_on_old_versions = waiting_old,
        "trigger file replaced over the API"
    );
    Ok(Json(json!({
        "version": set.version, "applied": applied, "added": added, "replaced": replaced, "removed": removed,
        "runs_on_old_versions": waiting_old, "warnings": set.warnings,
        "note": "runs in flight finish on the version they started with",
    }))
    .into_response())
}

/// `GET /v1/customers/{id}/journeys`: each run with its steps and reasons, the decisions that
/// started none (condition false, already running, once), and messages held back.
pub async fn journeys(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (_, p) = customer_read(&state, &headers, &id, q).await?;
    let engine = engine(&state)?;
    let mut out = triggers::read::journeys(&*engine.store, &p.identities)
        .await
        .map_err(internal)?;
    out["customer"] = Value::String(p.id());
    Ok(Json(out).into_response())
}

/// `GET /v1/aggregates`: the aggregates defined; `GET /v1/aggregates/{name}?key=`: a value.
pub async fn list_aggregates(
    State(state): State<SharedState>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    view_read(&state, &headers, "GET /v1/aggregates", q).await?;
    let set = crate::trigger_file::current_set(&state)
        .await?
        .unwrap_or_default();
    let list: Vec<Value> = set
        .aggregates
        .iter()
        .map(|a| json!({ "name": a.name, "on": a.on, "key": a.key.source, "window_ms": a.window_ms, "fn": a.func }))
        .collect();
    Ok(Json(json!({ "aggregates": list })).into_response())
}

pub async fn get_aggregate(
    State(state): State<SharedState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    q: Q,
) -> Result<Response, ApiError> {
    let (engine, q) = view_read(&state, &headers, "GET /v1/aggregates", q).await?;
    let set = crate::trigger_file::current_set(&state)
        .await?
        .unwrap_or_default();
    let unknown = || {
        not_found(
            "aggregate_not_found",
            format!("no aggregate named '{name}' in the trigger file in force"),
        )
    };
    let now = now_ms();
    match &q.key {
        Some(key) => {
            let v = triggers::read::aggregate(&*engine.store, &set, &name, key, now)
                .await
                .map_err(internal)?
                .ok_or_else(unknown)?;
            Ok(Json(json!({ "name": name, "key": key, "value": v })).into_response())
        }
        None => {
            let limit = q.limit.unwrap_or(100).clamp(1, 1000);
            let keys = triggers::read::aggregate_keys(&*engine.store, &set, &name, now, limit)
                .await
                .map_err(internal)?
                .ok_or_else(unknown)?;
            let values: BTreeMap<String, Value> = keys.into_iter().collect();
            Ok(Json(json!({ "name": name, "values": values })).into_response())
        }
    }
}
