//! The webhook sink: each alert POSTed as JSON, retried with backoff; weir's own alert JSON, a Slack
//! incoming-webhook message, or an Alertmanager `/api/v2/alerts` list.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use weir_model::Alert;

use crate::state::Shared;
use crate::telemetry::WebhookResult;

/// The body shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    /// The alert as weir writes it.
    Weir,
    /// `{"text": ...}` for Slack (and Mattermost) incoming webhooks.
    Slack,
    /// A one-alert list for Alertmanager's `POST /api/v2/alerts`.
    Alertmanager,
}

/// Where alerts are posted.
#[derive(Clone, Debug)]
pub struct Webhook {
    /// URL.
    pub url: String,
    /// Body shape.
    pub format: WebhookFormat,
    /// Attempts per alert.
    pub attempts: u32,
}

/// The body for an alert.
pub fn body(format: WebhookFormat, a: &Alert) -> serde_json::Value {
    match format {
        WebhookFormat::Weir => serde_json::to_value(a).unwrap_or_default(),
        WebhookFormat::Slack => serde_json::json!({
            "text": format!(
                "[{}] {} ({}x, last {}) {}",
                a.kind, a.summary, a.count, a.last_seen, a.evidence.reason
            )
        }),
        WebhookFormat::Alertmanager => {
            let mut labels = serde_json::json!({
                "alertname": format!("weir-{}", a.kind),
                "severity": serde_json::to_value(a.severity).unwrap_or_default(),
                "weir_id": a.id,
                "source": a.source.to_string(),
            });
            if let (Some(d), Some(map)) = (&a.destination, labels.as_object_mut()) {
                map.insert("destination".into(), d.to_string().into());
            }
            if let (Some(ns), Some(map)) = (&a.source.namespace, labels.as_object_mut()) {
                map.insert("namespace".into(), ns.clone().into());
            }
            serde_json::json!([{
                "labels": labels,
                "annotations": {
                    "summary": a.summary,
                    "description": a.evidence.reason,
                    "count": a.count.to_string(),
                },
                "startsAt": a.first_seen.to_string(),
            }])
        }
    }
}

/// Posts alerts from the queue until it closes.
pub async fn run(hook: Webhook, mut queue: mpsc::Receiver<Arc<Alert>>, shared: Arc<Shared>) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the webhook client could not be built");
            return;
        }
    };
    while let Some(alert) = queue.recv().await {
        let payload = body(hook.format, &alert);
        let mut delay = Duration::from_millis(500);
        let mut sent = false;
        for attempt in 1..=hook.attempts.max(1) {
            let result = client.post(&hook.url).json(&payload).send().await;
            match result {
                Ok(r) if r.status().is_success() => {
                    sent = true;
                    break;
                }
                Ok(r) => tracing::warn!(
                    "webhook {} answered {} (attempt {attempt})",
                    hook.url,
                    r.status()
                ),
                Err(e) => tracing::warn!("webhook {}: {e} (attempt {attempt})", hook.url),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
        shared.telemetry.webhook(if sent {
            WebhookResult::Sent
        } else {
            WebhookResult::Failed
        });
    }
}
