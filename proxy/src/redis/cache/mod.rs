//! The Redis ambassador's local cache (a `redis` listener's `cache:`):
//! replies to listed read commands on listed keys, answered from memory
//! and kept correct by Redis' own invalidation messages.
//!
//! # The consistency promise
//! A reply is never served once attache has received an invalidation for
//! its key: a dedicated RESP3 connection asks Redis to broadcast every
//! change to the tracked prefixes (`CLIENT TRACKING on BCAST PREFIX ...`),
//! and each message drops the key at once. Three races are closed here:
//! - a read's reply that arrives after an invalidation of its key was
//!   received (it left Redis before the write) is not stored: each miss
//!   takes a ticket, each invalidation stamps the key, and a reply is
//!   stored only when no stamp is newer than its ticket;
//! - a write through attache drops the key when it is sent and again when
//!   its reply comes back, and while it is in flight the key is neither
//!   served nor stored, so a client always reads its own writes;
//! - when tracking is lost (the connection closes, stops answering its
//!   heartbeat, or Sentinel names a new master) everything is dropped and
//!   the cache is bypassed until tracking is back (fail closed).
//!
//! Writes inside a pinned session (MULTI/EXEC, scripts) are not seen one
//! by one: when the session ends, its client waits for a fence (a PING on
//! the tracking connection), so every invalidation Redis sent for them has
//! been applied before the client's next read.
//!
//! # Layout
//! - `request`: which keys and commands are cached, under which request.
//! - `tracking`: the tracking connection, its heartbeat and fences.
//! - here: the store (sharded LRU, bounded by bytes and entries), tickets
//!   and write guards.

mod request;
mod tracking;

use std::collections::HashMap;
use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use attache_resp::{Command, Limits, check};
use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::commands::Spec;
use super::handshake::Credentials;
use super::target::Target;
use crate::telemetry::metrics::{CacheDisabled, CacheInvalidation, CacheMetrics};
use request::{Commands, KeyPatterns, MGET_ELEMENT, Read};

/// Bookkeeping counted per cached reply beside its bytes (the variant, its
/// place in the LRU list and hash table).
const VARIANT_OVERHEAD: usize = 96;
/// Bookkeeping counted per cached key.
const KEY_OVERHEAD: usize = 128;
/// Most shards; fewer when `max_memory` holds only a few largest entries.
const MAX_SHARDS: usize = 16;
/// Fences waiting for the tracking connection before clients wait to ask.
const FENCE_QUEUE: usize = 1024;

/// A cache space: replies differ per database and per protocol version.
type Space = (u32, u8);

/// A `redis` listener's cache: the store and the task that keeps it honest.
pub(crate) struct Cache {
    store: Arc<Store>,
    fences: mpsc::Sender<oneshot::Sender<()>>,
    /// Stops the tracking connection when the listener's handler goes.
    _tracking: DropGuard,
}

impl Cache {
    /// Builds the cache of listener `listener` and starts its tracking
    /// connection to `target`.
    pub(super) fn start(
        listener: &str,
        settings: &attache_config::RedisCache,
        target: Arc<Target>,
        credentials: Option<Credentials>,
        heartbeat_timeout: Duration,
        metrics: CacheMetrics,
    ) -> Self {
        let max_memory = usize::try_from(settings.max_memory).unwrap_or(usize::MAX);
        let max_entry_bytes = usize::try_from(settings.max_entry_bytes).unwrap_or(usize::MAX);
        let shards = (max_memory / max_entry_bytes.max(1)).clamp(1, MAX_SHARDS);
        let patterns = KeyPatterns::new(&settings.keys);
        let tracked = patterns.tracked_prefixes();
        let store = Arc::new(Store {
            listener: listener.to_owned(),
            patterns,
            commands: Commands::new(&settings.commands),
            max_ttl: settings.max_ttl,
            max_entry_bytes,
            max_memory,
            shard_memory: max_memory / shards,
            shard_entries: (settings.max_entries / shards).max(1),
            shards: (0..shards).map(|_| Mutex::new(Shard::new())).collect(),
            enabled: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            tickets: AtomicU64::new(1),
            target,
            metrics,
        });
        let (fences, fence_requests) = mpsc::channel(FENCE_QUEUE);
        let stop = CancellationToken::new();
        tokio::spawn(tracking::follow(
            store.clone(),
            tracking::Setup {
                credentials,
                prefixes: tracked,
                heartbeat_timeout,
            },
            fence_requests,
            stop.clone(),
        ));
        Self {
            store,
            fences,
            _tracking: stop.drop_guard(),
        }
    }

    /// What to do with `command` (its row in the command table: `spec`)
    /// from a client on `space`: answer it from the cache, or forward it
    /// with what to do once Redis answers.
    pub(super) fn consult(
        &self,
        command: &Command,
        spec: &Spec,
        database: u32,
        protocol: u8,
    ) -> Consulted {
        let store = &self.store;
        let space = (database, protocol);
        if let Some(read) = store.commands.read(command, &store.patterns) {
            return match read {
                Read::One { key, request } => match store.lookup(space, key, &request) {
                    Lookup::Hit(reply) => Consulted::Hit(reply),
                    Lookup::Miss(ticket) => Consulted::Forward(Some(AfterReply::Fill(Fill::new(
                        store, space, key, request, ticket,
                    )))),
                    Lookup::Bypass => Consulted::Forward(None),
                },
                Read::PerKey { keys } => self.consult_per_key(space, keys),
            };
        }
        if spec.read_only {
            return Consulted::Forward(None);
        }
        let written: Vec<Bytes> = command.args[1..]
            .iter()
            .filter(|arg| store.patterns.matches(arg))
            .map(|arg| Bytes::copy_from_slice(arg))
            .collect();
        if written.is_empty() {
            return Consulted::Forward(None);
        }
        Consulted::Forward(Some(AfterReply::Write(WriteGuard::new(store, written))))
    }

    /// `MGET`: answered here when every key is cached, else forwarded
    /// whole, each missing key's element stored on its own.
    fn consult_per_key(&self, space: Space, keys: &[Bytes]) -> Consulted {
        let store = &self.store;
        let mut found = Vec::with_capacity(keys.len());
        let mut fills = Vec::with_capacity(keys.len());
        for key in keys {
            match store.lookup(space, key, MGET_ELEMENT) {
                Lookup::Hit(element) => {
                    found.push(element);
                    fills.push(None);
                }
                Lookup::Miss(ticket) => fills.push(Some(Fill::new(
                    store,
                    space,
                    key,
                    MGET_ELEMENT.to_vec(),
                    ticket,
                ))),
                // Counted once for the command, below.
                Lookup::Bypass => return Consulted::Forward(None),
            }
        }
        if found.len() == keys.len() {
            let mut reply = BytesMut::new();
            reply.extend_from_slice(format!("*{}\r\n", keys.len()).as_bytes());
            for element in found {
                reply.extend_from_slice(&element);
            }
            return Consulted::Hit(reply.freeze());
        }
        Consulted::Forward(Some(AfterReply::Elements(fills)))
    }

    /// Waits until every invalidation Redis sent before now has been
    /// applied (at once when the cache is off: nothing is served then).
    pub(super) async fn fence(&self) {
        if !self.store.enabled.load(Ordering::Acquire) {
            return;
        }
        let (done, applied) = oneshot::channel();
        if self.fences.send(done).await.is_ok() {
            // Dropped unanswered when tracking is lost: the cache is
            // cleared and off then, which is as good.
            let _ = applied.await;
        }
    }

    /// The cache's state for `/cache`.
    pub(crate) fn status(&self) -> serde_json::Value {
        let store = &self.store;
        let (mut entries, mut bytes) = (0, 0);
        for shard in &store.shards {
            let shard = store.lock(shard);
            entries += shard.count;
            bytes += shard.bytes;
        }
        let metrics = &store.metrics;
        let (hits, misses) = (metrics.hits.get(), metrics.misses.get());
        let lookups = hits + misses;
        serde_json::json!({
            "listener": store.listener,
            "state": if store.enabled.load(Ordering::Acquire) { "tracking" } else { "bypassed" },
            "entries": entries,
            "bytes": bytes,
            "max_memory": store.max_memory,
            "hits": hits,
            "misses": misses,
            "bypasses": metrics.bypasses.get(),
            "hit_ratio": if lookups == 0 { None } else { Some(hits as f64 / lookups as f64) },
        })
    }
}

/// What a client does with a command, given the cache.
pub(super) enum Consulted {
    /// Answer with this reply, from the cache.
    Hit(Bytes),
    /// Send it to Redis; then hand its reply to this, if any.
    Forward(Option<AfterReply>),
}

/// What a forwarded command leaves to do when its reply comes back (or
/// when the client gives up: dropping it is always safe).
pub(super) enum AfterReply {
    /// Store the reply of a miss.
    Fill(Fill),
    /// Store each element of an `MGET` reply for the keys that missed.
    Elements(Vec<Option<Fill>>),
    /// A write: its keys are dropped once more, before the reply goes out.
    Write(WriteGuard),
}

impl AfterReply {
    /// Whether this read goes through the cache (for spans).
    pub(super) fn is_fill(&self) -> bool {
        !matches!(self, Self::Write(_))
    }

    /// Redis answered `reply`.
    pub(super) fn answered(self, reply: &Bytes) {
        match self {
            Self::Fill(fill) => fill.store(reply),
            Self::Elements(fills) => {
                let Some(elements) = array_elements(reply, fills.len()) else {
                    return;
                };
                for (fill, element) in fills.into_iter().zip(elements) {
                    if let Some(fill) = fill {
                        fill.store(element);
                    }
                }
            }
            Self::Write(guard) => drop(guard),
        }
    }
}

/// The elements of an array reply of `count` elements.
fn array_elements(reply: &[u8], count: usize) -> Option<Vec<&[u8]>> {
    let header_end = reply.windows(2).position(|pair| pair == b"\r\n")?;
    if reply.first() != Some(&b'*')
        || std::str::from_utf8(&reply[1..header_end])
            .ok()?
            .parse::<usize>()
            .ok()?
            != count
    {
        return None;
    }
    let limits = Limits::for_replies();
    let mut rest = &reply[header_end + 2..];
    let mut elements = Vec::with_capacity(count);
    for _ in 0..count {
        let frame = check(rest, &limits).ok()??;
        let (element, after) = rest.split_at(frame.length);
        elements.push(element);
        rest = after;
    }
    Some(elements)
}

/// A miss whose reply may be stored: its ticket says which invalidations
/// came after it left.
pub(super) struct Fill {
    store: Arc<Store>,
    space: Space,
    key: Bytes,
    request: Vec<u8>,
    ticket: u64,
    /// Still counted in its key's pending fills.
    pending: bool,
}

impl Fill {
    fn new(store: &Arc<Store>, space: Space, key: &Bytes, request: Vec<u8>, ticket: u64) -> Self {
        Self {
            store: store.clone(),
            space,
            // Copied: the argument shares the client's read buffer.
            key: Bytes::copy_from_slice(key),
            request,
            ticket,
            pending: true,
        }
    }

    fn store(mut self, reply: &[u8]) {
        self.pending = false;
        self.store
            .fill(self.space, &self.key, &self.request, reply, self.ticket);
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        if self.pending {
            self.store.abandon(&self.key);
        }
    }
}

/// A write through attache in flight: its keys are not served or stored
/// until its reply, and are dropped again then.
pub(super) struct WriteGuard {
    store: Arc<Store>,
    keys: Vec<Bytes>,
}

impl WriteGuard {
    fn new(store: &Arc<Store>, keys: Vec<Bytes>) -> Self {
        for key in &keys {
            store.begin_write(key);
        }
        Self {
            store: store.clone(),
            keys,
        }
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        for key in &self.keys {
            self.store.end_write(key);
        }
    }
}

/// What a lookup found.
enum Lookup {
    Hit(Bytes),
    /// Not there: the ticket of the fill that may store the reply.
    Miss(u64),
    /// The cache cannot be used for this key now.
    Bypass,
}

/// The cached replies and everything the tracking task and clients share.
struct Store {
    listener: String,
    patterns: KeyPatterns,
    commands: Commands,
    max_ttl: Duration,
    max_entry_bytes: usize,
    max_memory: usize,
    shard_memory: usize,
    shard_entries: usize,
    shards: Box<[Mutex<Shard>]>,
    /// Redis tracks keys for the cache now.
    enabled: AtomicBool,
    /// The master generation tracking was set up on (Sentinel).
    generation: AtomicU64,
    /// Tickets for fills and stamps for invalidations, in one order.
    tickets: AtomicU64,
    target: Arc<Target>,
    metrics: CacheMetrics,
}

/// One part of the store, by key hash.
struct Shard {
    entries: LruCache<Bytes, KeyEntry>,
    /// Bytes counted for the entries.
    bytes: usize,
    /// Cached replies.
    count: usize,
    /// Keys with fills or writes in flight.
    pending: HashMap<Bytes, Pending>,
}

/// Every reply cached for one key.
struct KeyEntry {
    variants: Vec<Variant>,
    bytes: usize,
}

struct Variant {
    space: Space,
    request: Box<[u8]>,
    reply: Bytes,
    expires: Instant,
}

impl Variant {
    fn bytes(&self) -> usize {
        VARIANT_OVERHEAD + self.request.len() + self.reply.len()
    }
}

/// A key with reads or writes in flight.
#[derive(Default)]
struct Pending {
    fills: u32,
    writes: u32,
    /// The stamp of the key's latest invalidation while anything was in flight.
    invalidated_at: u64,
}

impl Pending {
    fn idle(&self) -> bool {
        self.fills == 0 && self.writes == 0
    }
}

impl Shard {
    fn new() -> Self {
        Self {
            entries: LruCache::unbounded(),
            bytes: 0,
            count: 0,
            pending: HashMap::new(),
        }
    }
}

impl Store {
    fn lock<'a>(&self, shard: &'a Mutex<Shard>) -> MutexGuard<'a, Shard> {
        shard.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    fn shard(&self, key: &[u8]) -> MutexGuard<'_, Shard> {
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        let index = usize::try_from(hash % self.shards.len() as u64).unwrap_or(0);
        self.lock(&self.shards[index])
    }

    fn ticket(&self) -> u64 {
        self.tickets.fetch_add(1, Ordering::AcqRel)
    }

    /// Whether tracking covers what clients read now.
    fn usable(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
            && self.generation.load(Ordering::Acquire) == self.target.generation()
    }

    fn lookup(&self, space: Space, key: &[u8], request: &[u8]) -> Lookup {
        if !self.usable() {
            self.metrics.bypasses.inc();
            return Lookup::Bypass;
        }
        let now = Instant::now();
        let mut shard = self.shard(key);
        let shard = &mut *shard;
        if shard
            .pending
            .get(key)
            .is_some_and(|pending| pending.writes > 0)
        {
            self.metrics.bypasses.inc();
            return Lookup::Bypass;
        }
        let mut expired = None;
        if let Some(entry) = shard.entries.get_mut(key)
            && let Some(position) = entry
                .variants
                .iter()
                .position(|variant| variant.space == space && *variant.request == *request)
        {
            let variant = &entry.variants[position];
            if variant.expires > now {
                self.metrics.hits.inc();
                return Lookup::Hit(variant.reply.clone());
            }
            let before = entry.bytes;
            entry.variants.swap_remove(position);
            entry.bytes =
                KEY_OVERHEAD + key.len() + entry.variants.iter().map(Variant::bytes).sum::<usize>();
            expired = Some((before - entry.bytes, entry.variants.is_empty()));
        }
        if let Some((bytes, emptied)) = expired {
            self.forget(shard, bytes, 1);
            if emptied {
                let rest = shard.entries.pop(key).map_or(0, |entry| entry.bytes);
                self.forget(shard, rest, 0);
            }
        }
        self.metrics.misses.inc();
        let ticket = self.ticket();
        shard
            .pending
            .entry(Bytes::copy_from_slice(key))
            .or_default()
            .fills += 1;
        Lookup::Miss(ticket)
    }

    /// Stores `reply` for a fill with `ticket`, unless the key was
    /// invalidated or written since the ticket was taken.
    fn fill(&self, space: Space, key: &Bytes, request: &[u8], reply: &[u8], ticket: u64) {
        let mut shard = self.shard(key);
        let shard = &mut *shard;
        let Some(pending) = shard.pending.get_mut(key) else {
            return;
        };
        pending.fills -= 1;
        let fresh = pending.invalidated_at < ticket && pending.writes == 0;
        if pending.idle() {
            shard.pending.remove(key);
        }
        // Errors are not cached (a WRONGTYPE now may be a value later,
        // and attache's own errors are about the path, not the key).
        let cacheable = fresh
            && reply.len() <= self.max_entry_bytes
            && !matches!(reply.first(), Some(b'-' | b'!'));
        if !cacheable || !self.usable() {
            return;
        }
        let variant = Variant {
            space,
            request: request.into(),
            // Copied: the reply shares the shared connection's read buffer.
            reply: Bytes::copy_from_slice(reply),
            expires: Instant::now() + self.max_ttl,
        };
        let entry = shard.entries.get_or_insert_mut(key.clone(), || KeyEntry {
            variants: Vec::new(),
            bytes: 0,
        });
        let before = entry.bytes;
        let mut counted: u8 = 1;
        if let Some(old) = entry
            .variants
            .iter_mut()
            .find(|old| old.space == space && *old.request == *request)
        {
            counted = 0;
            *old = variant;
        } else {
            entry.variants.push(variant);
        }
        entry.bytes =
            KEY_OVERHEAD + key.len() + entry.variants.iter().map(Variant::bytes).sum::<usize>();
        let after = entry.bytes;
        shard.bytes = shard.bytes + after - before;
        shard.count += usize::from(counted);
        self.metrics.bytes.inc_by(after as i64 - before as i64);
        self.metrics.entries.inc_by(i64::from(counted));
        self.evict(shard, key);
    }

    /// Evicts until `shard` is within its bounds: the least recently used
    /// other keys first, then the oldest replies of `key` (just written,
    /// so the most recent), keeping its newest unless that one alone does
    /// not fit: one key read many ways (LRANGE ranges, HGET fields) is
    /// trimmed, not dropped whole.
    fn evict(&self, shard: &mut Shard, key: &Bytes) {
        while shard.bytes > self.shard_memory || shard.count > self.shard_entries {
            if shard.entries.len() > 1 {
                let Some((_, evicted)) = shard.entries.pop_lru() else {
                    break;
                };
                let variants = evicted.variants.len();
                self.metrics.evictions.inc_by(variants as u64);
                self.forget(shard, evicted.bytes, variants);
                continue;
            }
            let Some(entry) = shard.entries.peek_mut(key) else {
                break;
            };
            if entry.variants.len() < 2 {
                // A reply that does not fit with its bookkeeping goes too.
                let evicted = entry.bytes;
                shard.entries.pop(key);
                self.metrics.evictions.inc();
                self.forget(shard, evicted, 1);
                break;
            }
            let oldest = entry.variants.remove(0).bytes();
            entry.bytes -= oldest;
            self.metrics.evictions.inc();
            self.forget(shard, oldest, 1);
        }
    }

    /// A fill that will not store: its client left or its reply failed.
    fn abandon(&self, key: &[u8]) {
        let mut shard = self.shard(key);
        if let Some(pending) = shard.pending.get_mut(key) {
            pending.fills -= 1;
            if pending.idle() {
                shard.pending.remove(key);
            }
        }
    }

    fn begin_write(&self, key: &Bytes) {
        let ticket = self.ticket();
        let mut shard = self.shard(key);
        let shard = &mut *shard;
        self.drop_key(shard, key, CacheInvalidation::Write);
        let pending = shard.pending.entry(key.clone()).or_default();
        pending.writes += 1;
        pending.invalidated_at = ticket;
    }

    fn end_write(&self, key: &Bytes) {
        let ticket = self.ticket();
        let mut shard = self.shard(key);
        let shard = &mut *shard;
        self.drop_key(shard, key, CacheInvalidation::Write);
        if let Some(pending) = shard.pending.get_mut(key) {
            pending.writes -= 1;
            pending.invalidated_at = ticket;
            if pending.idle() {
                shard.pending.remove(key);
            }
        }
    }

    /// Redis says `key` changed.
    fn invalidate(&self, key: &[u8]) {
        let ticket = self.ticket();
        let mut shard = self.shard(key);
        let shard = &mut *shard;
        let dropped = self.drop_key(shard, key, CacheInvalidation::Server);
        if let Some(pending) = shard.pending.get_mut(key) {
            pending.invalidated_at = ticket;
            // A read in flight will not be stored: counted as well.
            if !dropped {
                self.metrics.invalidated(CacheInvalidation::Server);
            }
        }
    }

    /// Drops every reply cached for `key`, counting it under `reason`;
    /// whether there were any.
    fn drop_key(&self, shard: &mut Shard, key: &[u8], reason: CacheInvalidation) -> bool {
        let Some(entry) = shard.entries.pop(key) else {
            return false;
        };
        self.metrics.invalidated(reason);
        self.forget(shard, entry.bytes, entry.variants.len());
        true
    }

    /// Uncounts `bytes` and `variants` removed from `shard`.
    fn forget(&self, shard: &mut Shard, bytes: usize, variants: usize) {
        shard.bytes -= bytes;
        shard.count -= variants;
        self.metrics.bytes.dec_by(bytes as i64);
        self.metrics.entries.dec_by(variants as i64);
    }

    /// Drops everything; what is in flight will not be stored.
    fn clear(&self) {
        let ticket = self.ticket();
        for shard in &self.shards {
            let mut shard = self.lock(shard);
            let shard = &mut *shard;
            let (bytes, count) = (shard.bytes, shard.count);
            shard.entries.clear();
            self.forget(shard, bytes, count);
            for pending in shard.pending.values_mut() {
                pending.invalidated_at = ticket;
            }
        }
    }

    /// Redis flushed, or its tracking table overflowed: every key may have changed.
    fn flushed(&self) {
        self.metrics.invalidated(CacheInvalidation::Flush);
        self.clear();
    }

    /// Tracking is set up on master generation `generation`: serve from now on.
    fn enable(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
        self.enabled.store(true, Ordering::Release);
        self.metrics.enabled.set(1);
        tracing::info!(listener = %self.listener, "Redis cache tracking keys; serving from the cache");
    }

    /// Tracking is lost: clear, and bypass until it is back.
    fn disable(&self, reason: CacheDisabled) {
        let was_enabled = self.enabled.swap(false, Ordering::AcqRel);
        self.clear();
        if was_enabled {
            self.metrics.enabled.set(0);
            self.metrics.disabled(reason);
            tracing::warn!(
                listener = %self.listener,
                reason = reason.label(),
                "Redis cache lost tracking: cleared, and bypassed until tracking is back"
            );
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The gauges are the listener's, shared with the next generation's cache.
        for shard in &self.shards {
            let shard = self.lock(shard);
            self.metrics.bytes.dec_by(shard.bytes as i64);
            self.metrics.entries.dec_by(shard.count as i64);
        }
        if self.enabled.load(Ordering::Acquire) {
            self.metrics.enabled.set(0);
        }
    }
}
