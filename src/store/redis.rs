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
//! Metadata lives in the same hash under fields starting with `#` (never a
//! valid session key): `#user`, `#created`, `#client`, `#agent`, and
//! `#seen` (written with each TTL refresh and change: the TTL alone cannot
//! date the last visit once the absolute deadline caps it). Each user
//! has a set of session ids (`<prefix>u:{<hash of user>}`, its own slot),
//! maintained after each change and cleaned lazily of expired members.
//!
//! Every call has a deadline (`store.timeout`): an outage gives 503 quickly,
//! and the connection manager reconnects by itself when Redis returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Script, ScriptInvocation};
use sha2::Digest;
use tokio::sync::OnceCell;

use super::{ApplyError, Error, Loaded, Lookup, Meta, Origin, Outcome, SessionInfo, Store, Target};
use crate::session::{Changes, Edit, ID_TEXT_LEN, Id, Policy, Refusal, UserId, json, now_ms};

const LOAD: &str = include_str!("redis/load.lua");
const APPLY: &str = include_str!("redis/apply.lua");
const KILL: &str = include_str!("redis/kill.lua");
const INFO: &str = include_str!("redis/info.lua");
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

/// What one round trip sends: a script or a plain command.
enum Call<'a> {
    Script(&'a ScriptInvocation<'a>),
    Command(&'a redis::Cmd),
}

impl Call<'_> {
    async fn on<T: redis::FromRedisValue>(
        &self,
        conn: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<T> {
        match self {
            Call::Script(invocation) => invocation.invoke_async(conn).await,
            Call::Command(cmd) => cmd.query_async(conn).await,
        }
    }
}

pub struct RedisStore {
    connection: Connection,
    options: RedisOptions,
    policy: Policy,
    load: Script,
    apply: Script,
    kill: Script,
    info: Script,
}

/// What the apply script answered.
enum Reply {
    /// `user` and `before` are the bound user after and before ("" for none).
    Applied {
        target: Target,
        has_data: bool,
        user: String,
        before: String,
    },
    Moved(Target),
    Gone,
    TooLarge(usize),
}

async fn deadline<T>(
    limit: Duration,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, call).await {
        Err(_) => Err(Error::Timeout(limit)),
        Ok(Err(e)) => Err(Error::Unavailable(format!("redis: {e}"))),
        Ok(Ok(v)) => Ok(v),
    }
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
            kill: Script::new(KILL),
            info: Script::new(INFO),
        })
    }

    /// The data hash and marker keys of an id, in one hash slot.
    fn keys(&self, id: &Id) -> (String, String) {
        session_keys(&self.options.key_prefix, id)
    }

    /// The set of a user's session ids (its own hash slot: a hash of the user id).
    fn user_key(&self, user: &UserId) -> String {
        let digest = sha2::Sha256::digest(user.as_str().as_bytes());
        let tag: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}u:{{{tag}}}", self.options.key_prefix)
    }

    /// Runs one script under the store's deadline (see [`Self::call`]).
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        self.call(Call::Script(invocation)).await
    }

    /// Runs one command under the store's deadline (see [`Self::call`]).
    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        self.call(Call::Command(cmd)).await
    }

    /// Sends `call` under the store's deadline. On a single server a call
    /// that meets a dropped connection is sent once more: after a Redis
    /// restart each replica's first call hits the old, dead socket (the
    /// manager reconnects for the next). A call sent on a dead socket never
    /// ran; one whose reply was lost runs twice, which every call
    /// tolerates: edits repeat, and a repeated Rotate or Flush finds the id
    /// moved or gone, as after a parallel request.
    async fn call<T: redis::FromRedisValue>(&self, call: Call<'_>) -> Result<T, Error> {
        let sent = async {
            match &self.connection {
                Connection::Standalone(manager) => match call.on(&mut manager.clone()).await {
                    Err(e) if e.is_connection_dropped() => call.on(&mut manager.clone()).await,
                    done => done,
                },
                Connection::Cluster(cluster) => {
                    let (client, cell) = &**cluster;
                    let conn = cell
                        .get_or_try_init(|| client.get_async_connection())
                        .await?;
                    call.on(&mut conn.clone()).await
                }
            }
        };
        deadline(self.options.timeout, sent).await
    }

    async fn apply_to(
        &self,
        target: &Target,
        changes: &Changes,
        origin: &Origin,
    ) -> Result<Reply, Error> {
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
            .arg(format!("{}|{}", renewed.id, renewed.issued_ms))
            .arg(changes.user.as_ref().map_or("", UserId::as_str))
            .arg(if changes.flush { now } else { target.issued_ms })
            .arg(origin.client.as_deref().unwrap_or(""))
            .arg(origin.agent.as_deref().unwrap_or(""))
            .arg(now);
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
        let field = |i: usize| reply.get(i).cloned().unwrap_or_default();
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => Reply::Applied {
                target: if changes.renews_id() {
                    renewed
                } else {
                    *target
                },
                has_data: field(1) == "1",
                user: field(2),
                before: field(3),
            },
            Some("moved") => parse_successor(&field(1)).map_or(Reply::Gone, Reply::Moved),
            Some("toolarge") => Reply::TooLarge(field(1).parse().unwrap_or(0)),
            _ => Reply::Gone,
        })
    }

    /// Keeps the user index in step with a change: the session joins its
    /// user's set, and leaves the set of a user it no longer belongs to.
    async fn index(
        &self,
        old: &Target,
        before: &str,
        new: &Target,
        after: &str,
        stored: bool,
    ) -> Result<(), Error> {
        if let Some(user) = UserId::parse(before)
            && (before != after || old.id != new.id || !stored)
        {
            self.cmd::<i64>(
                redis::cmd("SREM")
                    .arg(self.user_key(&user))
                    .arg(old.id.to_string()),
            )
            .await?;
        }
        if stored && let Some(user) = UserId::parse(after) {
            let key = self.user_key(&user);
            self.cmd::<i64>(redis::cmd("SADD").arg(&key).arg(new.id.to_string()))
                .await?;
            self.cmd::<i64>(redis::cmd("PEXPIRE").arg(&key).arg(self.policy.absolute_ms))
                .await?;
        }
        Ok(())
    }

    /// The ids in a user's set.
    async fn ids_of(&self, user: &UserId) -> Result<Vec<Id>, Error> {
        let members: Vec<String> = self
            .cmd(redis::cmd("SMEMBERS").arg(self.user_key(user)))
            .await?;
        Ok(members.iter().filter_map(|m| Id::parse(m)).collect())
    }

    /// Ends one session of `user`; its set member goes either way.
    async fn kill(&self, user: &UserId, id: &Id) -> Result<bool, Error> {
        let (data, marker) = self.keys(id);
        let mut invocation = self.kill.prepare_invoke();
        invocation
            .key(data)
            .key(marker)
            .arg(user.as_str())
            .arg(self.policy.absolute_ms);
        let killed: i64 = self.run(&invocation).await?;
        self.cmd::<i64>(
            redis::cmd("SREM")
                .arg(self.user_key(user))
                .arg(id.to_string()),
        )
        .await?;
        Ok(killed == 1)
    }

    /// The last time a session was seen: the later of its `#seen` field
    /// and what its idle TTL left implies. Both are lower bounds: the TTL
    /// reads early once the absolute deadline caps it, and `#seen` is stale
    /// if a replica older than that field refreshed the session since (a
    /// rolling upgrade) or absent if one wrote it.
    fn last_seen(&self, seen: Option<u64>, pttl: i64, now: u64) -> u64 {
        let used = self
            .policy
            .idle_ms
            .saturating_sub(u64::try_from(pttl).unwrap_or(0));
        let from_ttl = now.saturating_sub(used);
        seen.map_or(from_ttl, |seen| seen.max(from_ttl))
    }
}

/// `<prefix>{<first two characters of the id>}<rest>:d` and `…:m`: the
/// braces put both keys of a session in one cluster hash slot.
fn session_keys(prefix: &str, id: &Id) -> (String, String) {
    let mut buf = [0u8; ID_TEXT_LEN];
    let text = id.encode(&mut buf);
    let (tag, rest) = text.split_at(2);
    // Built by hand, not with format!: three times per request, and the
    // formatting machinery cost about 3,000 instructions each.
    let mut data = String::with_capacity(prefix.len() + ID_TEXT_LEN + 4);
    for part in [prefix, "{", tag, "}", rest] {
        data.push_str(part);
    }
    let mut marker = data.clone();
    data.push_str(":d");
    marker.push_str(":m");
    (data, marker)
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

fn text(bytes: &[u8]) -> Option<Arc<str>> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| !s.is_empty())
        .map(Arc::from)
}

/// `{"k":v,...}` from the hash's data fields, keys in the order serde_json
/// uses (sorted), so every store sends the same text for the same session;
/// and the metadata from the `#` fields.
fn decode_fields(pairs: &[Vec<u8>]) -> (Vec<u8>, Meta, Option<u64>) {
    let mut meta = Meta::default();
    let mut seen = None;
    let mut fields: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
    for kv in pairs.chunks_exact(2) {
        let (k, v) = (kv[0].as_slice(), kv[1].as_slice());
        match k {
            b"#user" => meta.user = std::str::from_utf8(v).ok().and_then(UserId::parse),
            b"#created" => {
                meta.created_ms = std::str::from_utf8(v)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0)
            }
            b"#client" => meta.client = text(v),
            b"#agent" => meta.agent = text(v),
            b"#seen" => seen = std::str::from_utf8(v).ok().and_then(|t| t.parse().ok()),
            _ if k.starts_with(b"#") => {}
            _ => {
                fields.insert(k, v);
            }
        }
    }
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
    (out, meta, seen)
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
            // At most a tenth of the idle timeout: a refresh interval as
            // long as the timeout would let a session in steady use expire.
            .arg(touch_ms.min(self.policy.idle_ms / 10))
            .arg(now_ms());
        let reply: Vec<Vec<u8>> = self.run(&invocation).await?;
        match reply.first().map(Vec::as_slice) {
            Some(b"live") if reply.len() >= 2 => {
                let pttl = std::str::from_utf8(&reply[1])
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let (text, mut meta, seen) = decode_fields(&reply[2..]);
                meta.last_seen_ms = self.last_seen(seen, pttl, now_ms());
                let data =
                    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).map_err(|_| {
                        Error::Unavailable(
                            "redis: a stored session is not valid header text".to_owned(),
                        )
                    })?;
                Ok(Lookup::Live(Loaded { data, meta }))
            }
            Some(b"dead") => Ok(Lookup::Dead),
            _ => Ok(Lookup::Unknown),
        }
    }

    async fn apply(
        &self,
        target: &Target,
        changes: &Changes,
        origin: &Origin,
    ) -> Result<Outcome, ApplyError> {
        let mut current = *target;
        for _ in 0..MAX_HOPS {
            match self.apply_to(&current, changes, origin).await? {
                Reply::Applied {
                    target,
                    has_data,
                    user,
                    before,
                } => {
                    self.index(&current, &before, &target, &user, has_data)
                        .await?;
                    let revoked = match UserId::parse(&user) {
                        Some(user) if changes.revoke_others => {
                            self.revoke_user(&user, Some(&target.id)).await?
                        }
                        _ => 0,
                    };
                    return Ok(Outcome::Applied {
                        target,
                        has_data,
                        revoked,
                    });
                }
                Reply::Moved(next) => current = next,
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

    async fn sessions_of(&self, user: &UserId) -> Result<Vec<SessionInfo>, Error> {
        let now = now_ms();
        let mut found = Vec::new();
        for id in self.ids_of(user).await? {
            let (data, _) = self.keys(&id);
            let mut invocation = self.info.prepare_invoke();
            invocation.key(data).arg(user.as_str());
            let info: Vec<String> = self.run(&invocation).await?;
            let [created, client, agent, pttl, seen] = info.as_slice() else {
                // Expired or rebound: drop the stale member.
                self.cmd::<i64>(
                    redis::cmd("SREM")
                        .arg(self.user_key(user))
                        .arg(id.to_string()),
                )
                .await?;
                continue;
            };
            found.push(SessionInfo {
                handle: id.handle(),
                created_ms: created.parse().unwrap_or(0),
                last_seen_ms: self.last_seen(seen.parse().ok(), pttl.parse().unwrap_or(0), now),
                client: (!client.is_empty()).then(|| client.clone()),
                agent: (!agent.is_empty()).then(|| agent.clone()),
            });
        }
        Ok(found)
    }

    async fn revoke_user(&self, user: &UserId, keep: Option<&Id>) -> Result<usize, Error> {
        let mut revoked = 0;
        for id in self
            .ids_of(user)
            .await?
            .iter()
            .filter(|id| Some(*id) != keep)
        {
            revoked += self.kill(user, id).await? as usize;
        }
        Ok(revoked)
    }

    async fn revoke_handle(&self, user: &UserId, handle: &str) -> Result<bool, Error> {
        match self
            .ids_of(user)
            .await?
            .into_iter()
            .find(|id| id.handle() == handle)
        {
            Some(id) => self.kill(user, &id).await,
            None => Ok(false),
        }
    }

    /// Redis expires keys itself.
    async fn sweep(&self) -> Result<usize, Error> {
        Ok(0)
    }

    async fn check(&self) -> Result<(), Error> {
        self.cmd::<String>(&redis::cmd("PING")).await.map(|_| ())
    }

    async fn count(&self) -> Result<Option<usize>, Error> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key layout is what data already in Redis is found by: it must
    /// not change from one version to the next.
    #[test]
    fn session_keys_keep_their_layout() {
        let id = Id::random();
        let text = id.to_string();
        let (data, marker) = session_keys("sg:", &id);
        assert_eq!(data, format!("sg:{{{}}}{}:d", &text[..2], &text[2..]));
        assert_eq!(marker, format!("sg:{{{}}}{}:m", &text[..2], &text[2..]));
    }
}
