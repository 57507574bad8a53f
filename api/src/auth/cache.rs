//! Verified API tokens, remembered for a short time so the hot path does
//! no Postgres round trip.
//!
//! Keyed by the token's SHA-256 (never the secret). An entry is used until
//! the earlier of its TTL and the token's own expiry; [`TokenCache::evict`]
//! drops a revoked token at once. The size is bounded: when full, stale
//! entries go first and, if none is stale, the whole cache is dropped (it
//! refills from Postgres; an attacker cannot fill it with tokens that are
//! not valid, which are never cached).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fulfil_core::access::Principal;
use fulfil_engine::tokens::{TokenHash, TokenId};

#[derive(Debug)]
struct Entry {
    id: TokenId,
    principal: Principal,
    until: Instant,
    expires_at: Option<DateTime<Utc>>,
}

/// The cache of verified tokens.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<TokenHash, Entry>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(super::CACHE_TTL, super::CACHE_CAPACITY)
    }
}

impl TokenCache {
    pub fn new(ttl: Duration, capacity: usize) -> TokenCache {
        TokenCache {
            ttl,
            capacity: capacity.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The principal of a token verified less than the TTL ago and not
    /// expired since.
    pub fn get(&self, hash: &TokenHash) -> Option<Principal> {
        let mut entries = self.entries.lock().ok()?;
        let entry = entries.get(hash)?;
        if entry.until > Instant::now() && entry.expires_at.is_none_or(|at| at > Utc::now()) {
            return Some(entry.principal.clone());
        }
        entries.remove(hash);
        None
    }

    /// Remembers a token just verified.
    pub fn insert(
        &self,
        hash: TokenHash,
        id: TokenId,
        principal: Principal,
        expires_at: Option<DateTime<Utc>>,
    ) {
        // A poisoned lock only loses the cache's help, never correctness.
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let now = Instant::now();
        if entries.len() >= self.capacity && !entries.contains_key(&hash) {
            entries.retain(|_, e| e.until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            hash,
            Entry {
                id,
                principal,
                until: now + self.ttl,
                expires_at,
            },
        );
    }

    /// Forgets every entry of token `id`.
    pub fn evict(&self, id: TokenId) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, e| e.id != id);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use fulfil_core::access::Role;
    use uuid::Uuid;

    use super::*;

    fn principal() -> Principal {
        Principal::new("user:ci", "team-a", &[Role::Viewer])
    }

    #[test]
    fn cached_tokens_are_evicted_by_id_and_never_outlive_their_expiry() {
        let cache = TokenCache::new(Duration::from_secs(60), 2);
        let (a, b, c) = (TokenHash::of("a"), TokenHash::of("b"), TokenHash::of("c"));
        let (ida, idb) = (TokenId(Uuid::now_v7()), TokenId(Uuid::now_v7()));
        cache.insert(a, ida, principal(), None);
        cache.insert(
            b,
            idb,
            principal(),
            Some(Utc::now() - chrono::Duration::seconds(1)),
        );
        assert_eq!(cache.get(&a), Some(principal()));
        assert_eq!(cache.get(&b), None, "expired since it was cached");
        cache.evict(ida);
        assert_eq!(cache.get(&a), None, "evicted");

        // Bounded: a third token into a full cache of live entries empties it.
        cache.insert(a, ida, principal(), None);
        cache.insert(b, idb, principal(), None);
        cache.insert(c, TokenId(Uuid::now_v7()), principal(), None);
        assert!(cache.len() <= 2, "{}", cache.len());
        assert_eq!(cache.get(&c), Some(principal()));

        let stale = TokenCache::new(Duration::ZERO, 4);
        stale.insert(a, ida, principal(), None);
        assert_eq!(stale.get(&a), None, "past its TTL");
    }
}
