//! Who presented a Kubernetes ServiceAccount token: `TokenReview` asks the API server, which checks the token's
//! signature, expiry, audience and that the pod it was issued to still exists.

use std::collections::BTreeMap;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

/// The `extra` key the API server fills with the node of the pod a token was issued to (Kubernetes 1.30 and
/// later: `ServiceAccountTokenPodNodeInfo`, on by default from 1.30, GA in 1.32).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// The `extra` key naming the pod a token is bound to (bound ServiceAccount tokens, Kubernetes 1.21 and later).
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The `extra` key holding the UID of the pod a token is bound to.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// What the API server said of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reviewed {
    /// A valid token for this audience, of this user.
    Authenticated {
        /// `system:serviceaccount:<namespace>:<name>` for a ServiceAccount token.
        username: String,
        /// The node of the pod the token was issued to, when the API server says.
        node: Option<String>,
        /// The pod the token is bound to, when it is bound to one.
        pod: Option<String>,
        /// That pod's UID.
        pod_uid: Option<String>,
    },
    /// Not a valid token for this audience (expired, revoked, another audience, not a token at all).
    Refused {
        /// The API server's reason, if it gave one.
        reason: String,
    },
}

/// Why a token could not be reviewed (not whether it is good: that is [`Reviewed`]).
#[derive(Debug, thiserror::Error)]
#[error("reviewing a token with the API server (TokenReview): {0}")]
pub struct ReviewError(#[source] pub kube::Error);

fn first(extra: &BTreeMap<String, Vec<String>>, key: &str) -> Option<String> {
    extra
        .get(key)
        .and_then(|v| v.first())
        .filter(|v| !v.is_empty())
        .cloned()
}

/// Asks the API server whether `token` is valid for `audience`, and whose it is. Needs `create` on
/// `tokenreviews.authentication.k8s.io`.
pub async fn review_token(
    client: &Client,
    token: &str,
    audience: &str,
) -> Result<Reviewed, ReviewError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..Default::default()
    };
    let answered = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(ReviewError)?;
    let status = answered.status.unwrap_or_default();
    // The API server lists the asked audiences the token is valid for; a client that asked must check it.
    let audience_granted = status
        .audiences
        .as_ref()
        .is_some_and(|granted| granted.iter().any(|a| a == audience));
    if status.authenticated != Some(true) || !audience_granted {
        let reason = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "the API server did not authenticate the token".into());
        return Ok(Reviewed::Refused { reason });
    }
    let user = status.user.unwrap_or_default();
    let extra = user.extra.unwrap_or_default();
    Ok(Reviewed::Authenticated {
        username: user.username.unwrap_or_default(),
        node: first(&extra, EXTRA_NODE_NAME),
        pod: first(&extra, EXTRA_POD_NAME),
        pod_uid: first(&extra, EXTRA_POD_UID),
    })
}
