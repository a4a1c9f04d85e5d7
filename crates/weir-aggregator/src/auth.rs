//! Who may talk to the aggregator: tokens that are real secrets ([`Token`]), and agents that are the node they
//! say they are ([`AgentAuth`]).
//!
//! In a cluster, agents present their pod's projected ServiceAccount token (audience `weir`, rotated by the
//! kubelet) and the aggregator asks the API server who it belongs to (`TokenReview`): the ServiceAccount must be
//! the agents' one and the node the token was issued on must be the node the batch claims. A stolen token
//! therefore speaks only for its own node, expires within the hour, and dies with its pod; no secret has to be
//! made, stored or rotated by the operator. (Per-node mTLS would bind as well, but needs a CA, a certificate per
//! node and its rotation: machinery the cluster already has in its token issuer.) Outside a cluster one shared
//! token ([`AgentAuth::Token`]) proves only that the sender holds it, not which node it is.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use weir_kube::Reviewed;

/// The shortest token accepted.
pub const MIN_TOKEN_BYTES: usize = 32;

/// Texts that mark a token as a placeholder someone forgot to replace (compared without case).
const PLACEHOLDERS: [&str; 9] = [
    "change-me",
    "changeme",
    "change_me",
    "replace-with",
    "replace-me",
    "replaceme",
    "placeholder",
    "example",
    "your-token",
];

/// A bearer token that is a real secret: at least [`MIN_TOKEN_BYTES`] bytes, not a placeholder, not one
/// character repeated. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Why a token is refused as a secret.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WeakToken {
    /// Too short to be guessed by no one.
    #[error(
        "it is {len} bytes long; use at least {MIN_TOKEN_BYTES} random bytes \
         (`head -c 32 /dev/urandom | base64`)"
    )]
    Short {
        /// Its length.
        len: usize,
    },
    /// A placeholder from a manifest or a guide.
    #[error(
        "it contains {0:?}, a placeholder: make a random one (`head -c 32 /dev/urandom | base64`)"
    )]
    Placeholder(&'static str),
    /// Too few distinct characters to be random.
    #[error(
        "it has only {distinct} distinct characters: make a random one (`head -c 32 /dev/urandom | base64`)"
    )]
    NotRandom {
        /// How many.
        distinct: usize,
    },
}

impl Token {
    /// A token from its text (surrounding white space removed), or why it is not a secret.
    pub fn new(text: &str) -> Result<Token, WeakToken> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_BYTES {
            return Err(WeakToken::Short { len: text.len() });
        }
        let lower = text.to_ascii_lowercase();
        if let Some(p) = PLACEHOLDERS.iter().find(|p| lower.contains(*p)) {
            return Err(WeakToken::Placeholder(p));
        }
        let mut seen = [false; 256];
        for b in text.bytes() {
            seen[usize::from(b)] = true;
        }
        let distinct = seen.iter().filter(|s| **s).count();
        if distinct < 8 {
            return Err(WeakToken::NotRandom { distinct });
        }
        Ok(Token(text.into()))
    }

    /// The token itself (for the UI's session cookie, which carries it).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, compared without an early exit (the time taken does not tell how much of
    /// it was right).
    pub fn matches(&self, given: &[u8]) -> bool {
        same(self.0.as_bytes(), given)
    }
}

/// Compares without an early exit.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How agents prove who they are.
pub enum AgentAuth {
    /// Nothing: whoever reaches the ingest listener may send as any node (a demo on loopback, tests).
    Open,
    /// One token shared by every agent: a holder may send as any node.
    Token(Token),
    /// Each agent's pod's ServiceAccount token, reviewed by the API server and bound to the pod's node.
    Kubernetes(Box<Reviewer>),
}

impl fmt::Debug for AgentAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentAuth::Open => f.write_str("Open"),
            AgentAuth::Token(_) => f.write_str("Token(…)"),
            AgentAuth::Kubernetes(r) => f
                .debug_struct("Kubernetes")
                .field("audience", &r.audience)
                .field("service_account", &r.service_account)
                .finish(),
        }
    }
}

/// Why an agent's request is refused before its body is read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No token, or not a valid one.
    #[error("a valid bearer token is required: {0}")]
    Unauthenticated(String),
    /// A valid token of another identity than the agents'.
    #[error("{0} is not the agents' ServiceAccount")]
    WrongAccount(String),
    /// A valid token not bound to a pod on a known node.
    #[error(
        "the token is not bound to a pod on a known node: agents present a projected ServiceAccount token \
         (a serviceAccountToken volume with the weir audience)"
    )]
    Unbound,
    /// A valid agent token, of another node than the batch claims.
    #[error("this token speaks for node {token_node:?}, not {claimed:?}")]
    WrongNode {
        /// The node the token was issued on.
        token_node: String,
        /// The node the request claims.
        claimed: String,
    },
    /// Too many tokens are being reviewed at once: retry later.
    #[error("too many tokens are being reviewed; retry")]
    Busy,
    /// The API server could not be asked: retry later.
    #[error("the token could not be reviewed: {0}")]
    Unavailable(String),
}

impl Refusal {
    /// Whether the same request may succeed later (the answer is 503, not 401 or 403).
    pub fn retryable(&self) -> bool {
        matches!(self, Refusal::Busy | Refusal::Unavailable(_))
    }
}

/// Who a reviewed agent token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    node: Option<String>,
    namespace: String,
    pod: Option<String>,
}

struct Cached {
    verdict: Result<Identity, Refusal>,
    until: Instant,
}

/// Tokens held in the review cache at most.
const CACHE_ENTRIES: usize = 4096;
/// How long a token's identity is trusted without asking again.
const TRUST_FOR: Duration = Duration::from_secs(60);
/// How long a refused token stays refused without asking again.
const REFUSE_FOR: Duration = Duration::from_secs(10);
/// Reviews in flight at once; more wait up to [`REVIEW_WAIT`], then are answered 503.
const REVIEWS_AT_ONCE: usize = 4;
const REVIEW_WAIT: Duration = Duration::from_secs(2);

/// Reviews agents' ServiceAccount tokens with the API server, remembering each answer for a minute so that a
/// batch costs no API request.
pub struct Reviewer {
    client: kube::Client,
    audience: String,
    /// The agents' ServiceAccount as a username (`system:serviceaccount:<namespace>:<name>`).
    service_account: String,
    /// Its namespace, which is its pods' namespace.
    namespace: String,
    cache: Mutex<HashMap<Box<str>, Cached>>,
    permits: Semaphore,
}

impl Reviewer {
    /// Agents must present tokens for `audience` of ServiceAccount `namespace/name`.
    pub fn new(client: kube::Client, audience: &str, namespace: &str, name: &str) -> Reviewer {
        Reviewer {
            client,
            audience: audience.to_owned(),
            service_account: format!("system:serviceaccount:{namespace}:{name}"),
            namespace: namespace.to_owned(),
            cache: Mutex::new(HashMap::new()),
            permits: Semaphore::new(REVIEWS_AT_ONCE),
        }
    }

    /// Checks that `token` is a valid agent token issued on node `claimed`. `node_of` finds the node of a pod
    /// (namespace, name) in the cluster state, for API servers that do not say a token's node.
    pub async fn check(
        &self,
        token: &str,
        claimed: &str,
        node_of: impl Fn(&str, &str) -> Option<String>,
    ) -> Result<(), Refusal> {
        let identity = self.identify(token).await?;
        let node = match identity.node {
            Some(node) => node,
            None => identity
                .pod
                .as_deref()
                .and_then(|pod| node_of(&identity.namespace, pod))
                .ok_or(Refusal::Unbound)?,
        };
        if node == claimed {
            Ok(())
        } else {
            Err(Refusal::WrongNode {
                token_node: node,
                claimed: claimed.to_owned(),
            })
        }
    }

    fn cached(&self, token: &str) -> Option<Result<Identity, Refusal>> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(token)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.verdict.clone())
    }

    fn remember(&self, token: &str, verdict: Result<Identity, Refusal>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        let until = Instant::now()
            + if verdict.is_ok() {
                TRUST_FOR
            } else {
                REFUSE_FOR
            };
        cache.insert(token.into(), Cached { verdict, until });
    }

    async fn identify(&self, token: &str) -> Result<Identity, Refusal> {
        if token.is_empty() {
            return Err(Refusal::Unauthenticated("no bearer token".into()));
        }
        if let Some(verdict) = self.cached(token) {
            return verdict;
        }
        let _permit = tokio::time::timeout(REVIEW_WAIT, self.permits.acquire())
            .await
            .map_err(|_| Refusal::Busy)?
            .map_err(|_| Refusal::Busy)?;
        // Another request may have reviewed the same token while this one waited.
        if let Some(verdict) = self.cached(token) {
            return verdict;
        }
        let reviewed = weir_kube::review_token(&self.client, token, &self.audience)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        let verdict = match reviewed {
            Reviewed::Refused { reason } => Err(Refusal::Unauthenticated(reason)),
            Reviewed::Authenticated { username, .. } if username != self.service_account => {
                Err(Refusal::WrongAccount(username))
            }
            Reviewed::Authenticated { node, pod, .. } => Ok(Identity {
                node,
                namespace: self.namespace.clone(),
                pod,
            }),
        };
        self.remember(token, verdict.clone());
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_secrets_are_tokens() {
        assert_eq!(
            Token::new("s3cret").unwrap_err(),
            WeakToken::Short { len: 6 }
        );
        assert_eq!(
            Token::new("change-me-weir-agent-token-0123456789").unwrap_err(),
            WeakToken::Placeholder("change-me")
        );
        assert_eq!(
            Token::new("  Replace-With-A-Long-Random-String-Please ").unwrap_err(),
            WeakToken::Placeholder("replace-with")
        );
        assert_eq!(
            Token::new(&"ab".repeat(20)).unwrap_err(),
            WeakToken::NotRandom { distinct: 2 }
        );
        let token = Token::new(" q3VtN8zR1xKc0pW4yH7bL2sD9fG6jM5a \n").unwrap();
        assert!(token.matches(b"q3VtN8zR1xKc0pW4yH7bL2sD9fG6jM5a"));
        assert!(!token.matches(b"q3VtN8zR1xKc0pW4yH7bL2sD9fG6jM5b"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(…)");
    }
}
