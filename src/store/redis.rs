//! The Redis store: many proxy replicas share one set of sessions.
//!
//! A session is one Redis hash (`<prefix>{XY}<rest of id>:d`, one field per
//! session key holding its JSON text) with a TTL of the idle timeout, and a
//! marker string (`...:m`) that expires at the id's absolute deadline. The
//! marker outliving the hash is what makes an expired, rotated or flushed id
//! *dead* on every replica at once; a rotated id's marker names its
//! successor so a write in flight follows the session.
//!
//! Reads and changes are Lua scripts, so each is atomic on the server: set
//! and delete are HSET and HDEL, Rotate and Flush move and retire the id in
//! the same script. The hash tag `{XY}` (the id's first two characters) puts
//! a session's keys in one Cluster slot, and a rotation draws the new id
//! with the same first two characters, so the script never crosses slots.
//!
//! Every call has a deadline (`store.timeout`): an outage gives 503 quickly,
//! and the connection manager reconnects by itself when Redis returns.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderValue;
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Script, ScriptInvocation};
use tokio::sync::OnceCell;

use super::{ApplyError, Error, Lookup, Outcome, Store, Target};
use crate::session::{Changes, Edit, Id, Policy, Refusal, json, now_ms};

const LOAD: &str = include_str!("redis/load.lua");
const APPLY: &str = include_str!("redis/apply.lua");
/// Longest chain of rotations a late write follows.
const MAX_HOPS: usize = 8;

/// Settings for [`RedisStore::connect`].
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://` or `rediss://` (TLS).
    pub url: String,
    pub key_prefix: String,
    /// Use the Redis Cluster client, with `url` as the seed node.
    pub cluster: bool,
    /// Deadline of every call; past it the request gets 503.
    pub timeout: Duration,
    /// Least time between two TTL refreshes of one session by reads.
    pub touch_interval: Duration,
}

enum Connection {
    Standalone(ConnectionManager),
    /// Connected on first use, and again after a failed first attempt.
    Cluster(Box<(ClusterClient, OnceCell<ClusterConnection>)>),
}

pub struct RedisStore {
    connection: Connection,
    options: RedisOptions,
    policy: Policy,
    load: Script,
    apply: Script,
}

impl RedisStore {
    /// Prepares the client. Nothing is sent yet: the proxy starts even if
    /// Redis is down, reports not ready, and serves 503 until it is back.
    pub fn connect(options: RedisOptions, policy: Policy) -> Result<RedisStore, Error> {
        let bad_url = |e: redis::RedisError| Error::Unavailable(format!("redis: store.url: {e}"));
        let connection = if options.cluster {
            let client = ClusterClient::builder([options.url.as_str()])
                .connection_timeout(options.timeout)
                .response_timeout(options.timeout)
                .build()
                .map_err(bad_url)?;
            Connection::Cluster(Box::new((client, OnceCell::new())))
        } else {
            let client = redis::Client::open(options.url.as_str()).map_err(bad_url)?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.timeout))
                .set_response_timeout(Some(options.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            Connection::Standalone(
                ConnectionManager::new_lazy_with_config(client, config).map_err(bad_url)?,
            )
        };
        Ok(RedisStore {
            connection,
            options,
            policy,
            load: Script::new(LOAD),
            apply: Script::new(APPLY),
        })
    }

    /// The data hash and marker keys of an id, in one hash slot.
    fn keys(&self, id: &Id) -> (String, String) {
        let text = id.to_string();
        let (tag, rest) = text.split_at(2);
        let base = format!("{}{{{tag}}}{rest}", self.options.key_prefix);
        (format!("{base}:d"), format!("{base}:m"))
    }

    /// Runs a script invocation under the store's deadline.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let call = async {
            match &self.connection {
                Connection::Standalone(manager) => {
                    invocation.invoke_async(&mut manager.clone()).await
                }
                Connection::Cluster(cluster) => {
                    let (client, cell) = &**cluster;
                    let conn = cell
                        .get_or_try_init(|| client.get_async_connection())
                        .await?;
                    invocation.invoke_async(&mut conn.clone()).await
                }
            }
        };
        match tokio::time::timeout(self.options.timeout, call).await {
            Err(_) => Err(Error::Timeout(self.options.timeout)),
            Ok(Err(e)) => Err(Error::Unavailable(format!("redis: {e}"))),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn apply_to(&self, target: &Target, changes: &Changes) -> Result<Reply, Error> {
        let now = now_ms();
        let renewed = Target {
            id: same_slot_id(&target.id),
            issued_ms: now,
        };
        let (data, marker) = self.keys(&target.id);
        let (new_data, new_marker) = self.keys(&renewed.id);
        let old_left = self
            .policy
            .absolute_deadline(target.issued_ms)
            .saturating_sub(now)
            .max(1);
        let flags = match (changes.flush, changes.rotate) {
            (true, _) => "f",
            (false, true) => "r",
            (false, false) => "",
        };
        let mut invocation = self.apply.prepare_invoke();
        invocation
            .key(data)
            .key(marker)
            .key(new_data)
            .key(new_marker)
            .arg(self.policy.idle_ms)
            .arg(old_left)
            .arg(self.policy.absolute_ms)
            .arg(self.policy.max_bytes)
            .arg(flags)
            .arg(format!("{}|{}", renewed.id, renewed.issued_ms));
        for edit in &changes.edits {
            match edit {
                Edit::Set(key, value) => invocation
                    .arg("s")
                    .arg(key.as_str())
                    .arg(json::encode_value(value)),
                Edit::Delete(key) => invocation.arg("d").arg(key.as_str()).arg(""),
            };
        }
        let reply: Vec<String> = self.run(&invocation).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => Reply::Applied {
                target: if changes.renews_id() {
                    renewed
                } else {
                    *target
                },
                has_data: reply.get(1).map(String::as_str) == Some("1"),
            },
            Some("moved") => reply
                .get(1)
                .and_then(|m| parse_successor(m))
                .map_or(Reply::Gone, Reply::Moved),
            Some("toolarge") => {
                Reply::TooLarge(reply.get(1).and_then(|s| s.parse().ok()).unwrap_or(0))
            }
            _ => Reply::Gone,
        })
    }
}

/// What the apply script answered.
enum Reply {
    Applied { target: Target, has_data: bool },
    Moved(Target),
    Gone,
    TooLarge(usize),
}

/// A fresh id whose first two characters (the hash tag) are `old`'s: the
/// first 12 bits are kept, the other 244 are new random bits.
fn same_slot_id(old: &Id) -> Id {
    let mut bytes = *Id::random().as_bytes();
    let old = old.as_bytes();
    bytes[0] = old[0];
    bytes[1] = (old[1] & 0xf0) | (bytes[1] & 0x0f);
    Id::from_bytes(bytes)
}

fn parse_successor(text: &str) -> Option<Target> {
    let (id, issued) = text.split_once('|')?;
    Some(Target {
        id: Id::parse(id)?,
        issued_ms: issued.parse().ok()?,
    })
}

/// `{"k":v,...}` from the hash's fields, keys in the order serde_json uses
/// (sorted), so every store sends the same text for the same session.
fn encode_fields(pairs: &[Vec<u8>]) -> Vec<u8> {
    let fields: BTreeMap<&[u8], &[u8]> = pairs
        .chunks_exact(2)
        .map(|kv| (kv[0].as_slice(), kv[1].as_slice()))
        .collect();
    let mut out = Vec::with_capacity(2 + pairs.iter().map(|p| p.len() + 2).sum::<usize>());
    out.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(k);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(v);
    }
    out.push(b'}');
    out
}

impl Store for RedisStore {
    async fn load(&self, id: &Id) -> Result<Lookup, Error> {
        let (data, marker) = self.keys(id);
        let touch_ms = u64::try_from(self.options.touch_interval.as_millis()).unwrap_or(u64::MAX);
        let mut invocation = self.load.prepare_invoke();
        invocation
            .key(data)
            .key(marker)
            .arg(self.policy.idle_ms)
            .arg(touch_ms.min(self.policy.idle_ms));
        let reply: Vec<Vec<u8>> = self.run(&invocation).await?;
        match reply.first().map(Vec::as_slice) {
            Some(b"live") => {
                let text = encode_fields(&reply[1..]);
                let value =
                    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).map_err(|_| {
                        Error::Unavailable(
                            "redis: a stored session is not valid header text".to_owned(),
                        )
                    })?;
                Ok(Lookup::Live(value))
            }
            Some(b"dead") => Ok(Lookup::Dead),
            _ => Ok(Lookup::Unknown),
        }
    }

    async fn apply(&self, target: &Target, changes: &Changes) -> Result<Outcome, ApplyError> {
        let mut target = *target;
        for _ in 0..MAX_HOPS {
            match self.apply_to(&target, changes).await? {
                Reply::Applied { target, has_data } => {
                    return Ok(Outcome::Applied { target, has_data });
                }
                Reply::Moved(next) => target = next,
                Reply::Gone => return Ok(Outcome::Gone),
                Reply::TooLarge(size) => {
                    return Err(Refusal::TooLarge {
                        size,
                        limit: self.policy.max_bytes,
                    }
                    .into());
                }
            }
        }
        Ok(Outcome::Gone)
    }

    /// Redis expires keys itself.
    async fn sweep(&self) -> Result<usize, Error> {
        Ok(0)
    }

    async fn check(&self) -> Result<(), Error> {
        let ping = Script::new("return redis.call('PING')");
        let invocation = ping.prepare_invoke();
        self.run::<String>(&invocation).await.map(|_| ())
    }

    async fn count(&self) -> Result<Option<usize>, Error> {
        Ok(None)
    }
}
