//! `GET /api/v1/nodes`: every running role instance (asked over NATS, with
//! replies gathered for a short window) and the queue figures of the
//! cluster.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use picloud_http::{ApiError, ErrorBody};
use serde_json::{Value, json};

use super::Shared;
use crate::probes::QueueLag;

/// How long replies to a node ping are gathered. Nodes answer from memory;
/// on loopback or a LAN they reply within a millisecond or two.
const GATHER_WINDOW: Duration = Duration::from_millis(300);

/// `GET /api/v1/nodes`: the nodes and the queue figures.
#[utoipa::path(get, path = "/api/v1/nodes", tag = "observability",
    responses(
        (status = 200, description = "`{\"nodes\": [...], \"queue\": {...}}`: every running role instance and the pending jobs and outbox lag", body = Object),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 503, description = "the message bus is unavailable", body = ErrorBody),
    ))]
pub async fn list(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let (nodes, queue) = tokio::join!(
        state.bus.gather_nodes(GATHER_WINDOW),
        QueueLag::read(&state.bus, &state.store),
    );
    let nodes = nodes.map_err(|e| {
        tracing::warn!(error = %e, "node ping failed");
        ApiError::unavailable("the message bus is unavailable")
    })?;
    Ok(Json(json!({ "nodes": nodes, "queue": queue })))
}
