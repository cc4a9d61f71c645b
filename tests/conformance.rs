//! The store conformance suite: every store runs exactly these tests,
//! generated once by `conformance!` with a constructor per store.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sessiongate::session::{Changes, Edit, Id, Key, Policy, UserId, now_ms};
use sessiongate::store::{ApplyError, Error, Lookup, Origin, Outcome, Store, Target};

fn policy() -> Policy {
    Policy {
        idle_ms: 60_000,
        absolute_ms: 3_600_000,
        max_bytes: 4096,
        max_sessions: 10_000,
    }
}

fn target() -> Target {
    Target {
        id: Id::random(),
        issued_ms: now_ms(),
    }
}

fn set(key: &str, value: Value) -> Changes {
    Changes {
        edits: vec![Edit::Set(Key::parse(key).unwrap(), value)],
        ..Changes::default()
    }
}

fn delete(key: &str) -> Changes {
    Changes {
        edits: vec![Edit::Delete(Key::parse(key).unwrap())],
        ..Changes::default()
    }
}

fn rotate() -> Changes {
    Changes {
        rotate: true,
        ..Changes::default()
    }
}

fn flush() -> Changes {
    Changes {
        flush: true,
        ..Changes::default()
    }
}

async fn data<S: Store>(store: &S, id: &Id) -> Option<Value> {
    match store.load(id).await.unwrap() {
        Lookup::Live(v) => Some(serde_json::from_slice(v.data.as_bytes()).unwrap()),
        _ => None,
    }
}

/// The store's live count, where it keeps one (Redis does not).
async fn held<S: Store>(store: &S) -> Option<usize> {
    store.count().await.unwrap()
}

/// Asserts the live count where the store keeps one.
macro_rules! assert_held {
    ($store:expr, $n:expr) => {
        if let Some(n) = held($store).await {
            assert_eq!(n, $n, "live sessions held");
        }
    };
}

/// Applies and expects success; returns the session's target afterwards.
async fn apply<S: Store>(store: &S, t: &Target, c: &Changes) -> Target {
    match store.apply(t, c, &Origin::default()).await {
        Ok(Outcome::Applied { target, .. }) => target,
        other => panic!("apply failed: {other:?}"),
    }
}

pub async fn unknown_ids_are_unknown<S: Store>(store: S) {
    assert_eq!(store.load(&Id::random()).await.unwrap(), Lookup::Unknown);
    assert_held!(&store, 0);
    store.check().await.unwrap();
}

pub async fn set_then_load_returns_the_data<S: Store>(store: S) {
    let t = target();
    let after = apply(&store, &t, &set("user", json!({"name": "ä"}))).await;
    assert_eq!(after, t, "a plain set keeps the id");
    assert_eq!(
        data(&store, &t.id).await,
        Some(json!({"user": {"name": "ä"}}))
    );
    let raw = match store.load(&t.id).await.unwrap() {
        Lookup::Live(v) => v.data,
        other => panic!("{other:?}"),
    };
    assert!(raw.as_bytes().is_ascii());
    assert_held!(&store, 1);
}

pub async fn deleting_every_key_leaves_an_unknown_not_a_dead_id<S: Store>(store: S) {
    let t = target();
    apply(&store, &t, &set("a", json!(1))).await;
    match store
        .apply(&t, &delete("a"), &Origin::default())
        .await
        .unwrap()
    {
        Outcome::Applied {
            target, has_data, ..
        } => assert_eq!((target, has_data), (t, false)),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.load(&t.id).await.unwrap(), Lookup::Unknown);
    assert_held!(&store, 0);
}

pub async fn parallel_writes_to_different_keys_are_all_kept<S: Store>(store: S) {
    let store = Arc::new(store);
    let t = target();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { apply(&*store, &t, &set(&format!("k{i}"), json!(i))).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let got = data(&*store, &t.id).await.unwrap();
    assert_eq!(got.as_object().unwrap().len(), 64, "lost updates: {got}");
}

pub async fn rotate_moves_the_data_and_kills_the_old_id<S: Store>(store: S) {
    let t = target();
    apply(&store, &t, &set("cart", json!([1]))).await;
    let new = apply(&store, &t, &rotate()).await;
    assert_ne!(new.id, t.id);
    assert_eq!(store.load(&t.id).await.unwrap(), Lookup::Dead);
    assert_eq!(data(&store, &new.id).await, Some(json!({"cart": [1]})));
    assert_held!(&store, 1);
}

pub async fn rotating_a_never_stored_session_kills_its_id<S: Store>(store: S) {
    let t = target();
    let new = apply(&store, &t, &rotate()).await;
    assert_ne!(new.id, t.id);
    assert_eq!(store.load(&t.id).await.unwrap(), Lookup::Dead);
    assert_eq!(store.load(&new.id).await.unwrap(), Lookup::Unknown);
}

pub async fn a_write_in_flight_during_a_rotation_lands_in_the_new_session<S: Store>(store: S) {
    let t = target();
    apply(&store, &t, &set("a", json!(1))).await;
    let new = apply(&store, &t, &rotate()).await;
    // A request that loaded the old id before the rotation now writes.
    let landed = apply(&store, &t, &set("b", json!(2))).await;
    assert_eq!(landed, new);
    assert_eq!(data(&store, &new.id).await, Some(json!({"a": 1, "b": 2})));
    assert_eq!(store.load(&t.id).await.unwrap(), Lookup::Dead);
}

pub async fn flush_destroys_the_session_and_a_late_write_is_dropped<S: Store>(store: S) {
    let t = target();
    apply(&store, &t, &set("a", json!(1))).await;
    match store.apply(&t, &flush(), &Origin::default()).await.unwrap() {
        Outcome::Applied {
            target, has_data, ..
        } => {
            assert_ne!(target.id, t.id);
            assert!(!has_data);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.load(&t.id).await.unwrap(), Lookup::Dead);
    assert_eq!(
        store
            .apply(&t, &set("late", json!(1)), &Origin::default())
            .await
            .unwrap(),
        Outcome::Gone
    );
    assert_held!(&store, 0);
}

pub async fn flush_with_sets_starts_a_new_session_with_only_those<S: Store>(store: S) {
    let t = target();
    apply(&store, &t, &set("old", json!(1))).await;
    let mut changes = set("new", json!(2));
    changes.flush = true;
    let new = apply(&store, &t, &changes).await;
    assert_ne!(new.id, t.id);
    assert_eq!(data(&store, &new.id).await, Some(json!({"new": 2})));
    assert_eq!(store.load(&t.id).await.unwrap(), Lookup::Dead);
}

pub async fn an_oversized_change_is_refused_whole<S: Store>(store: S) {
    let t = target();
    apply(&store, &t, &set("a", json!(1))).await;
    let mut changes = set("b", json!("x".repeat(5000)));
    changes.rotate = true;
    match store.apply(&t, &changes, &Origin::default()).await {
        Err(ApplyError::Refused(_)) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        data(&store, &t.id).await,
        Some(json!({"a": 1})),
        "nothing applied, not even the rotation"
    );
}

pub async fn an_idle_session_expires<S: Store>(store: S) {
    let t = target();
    apply(&store, &t, &set("a", json!(1))).await;
    // Reads for 1.5 times the idle timeout keep it alive: each restarts
    // the idle timer (also when a cache answers the read).
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            data(&store, &t.id).await.is_some(),
            "a read restarts the idle timer"
        );
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(store.load(&t.id).await.unwrap(), Lookup::Dead);
    assert_eq!(
        store
            .apply(&t, &set("b", json!(2)), &Origin::default())
            .await
            .unwrap(),
        Outcome::Gone,
        "no resurrection"
    );
}

pub async fn a_session_expires_at_its_absolute_deadline<S: Store>(store: S) {
    // Issued long enough ago that its absolute deadline is 600 ms away.
    let t = Target {
        id: Id::random(),
        issued_ms: now_ms() - 1_400,
    };
    apply(&store, &t, &set("a", json!(1))).await;
    assert!(data(&store, &t.id).await.is_some());
    tokio::time::sleep(Duration::from_millis(900)).await;
    // Past the absolute deadline a store may forget the id entirely (the
    // proxy refuses such a cookie by its issue time); it never serves data.
    let after = store.load(&t.id).await.unwrap();
    assert!(matches!(after, Lookup::Dead | Lookup::Unknown), "{after:?}");
}

pub async fn sweep_removes_expired_sessions<S: Store>(store: S) {
    for _ in 0..3 {
        apply(&store, &target(), &set("a", json!(1))).await;
    }
    assert_held!(&store, 3);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let swept = store.sweep().await.unwrap();
    assert!(swept <= 3);
    assert_held!(&store, 0);
}

pub async fn a_full_store_refuses_new_sessions_but_serves_existing_ones<S: Store>(store: S) {
    let first = target();
    apply(&store, &first, &set("a", json!(1))).await;
    apply(&store, &target(), &set("a", json!(1))).await;
    match store
        .apply(&target(), &set("a", json!(1)), &Origin::default())
        .await
    {
        Err(ApplyError::Store(Error::Full { limit: 2 })) => {}
        other => panic!("expected Full, got {other:?}"),
    }
    apply(&store, &first, &set("b", json!(2))).await;
    let rotated = apply(&store, &first, &rotate()).await;
    assert_eq!(
        data(&store, &rotated.id).await,
        Some(json!({"a": 1, "b": 2})),
        "rotation is not a new session"
    );
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn bind(name: &str) -> Changes {
    Changes {
        user: Some(user(name)),
        ..Changes::default()
    }
}

fn meta(loaded: Lookup) -> sessiongate::store::Meta {
    match loaded {
        Lookup::Live(l) => l.meta,
        other => panic!("not live: {other:?}"),
    }
}

pub async fn a_bound_user_is_indexed_with_its_metadata<S: Store>(store: S) {
    let (a, b, other) = (target(), target(), target());
    let origin = Origin {
        client: Some("203.0.113.9".into()),
        agent: Some("TestBrowser/1.0".into()),
    };
    store.apply(&a, &set("k", json!(1)), &origin).await.unwrap();
    apply(&store, &a, &bind("alice")).await;
    apply(&store, &b, &bind("alice")).await;
    apply(&store, &other, &bind("bob")).await;
    let m = meta(store.load(&a.id).await.unwrap());
    assert_eq!(m.user, Some(user("alice")));
    assert_eq!(
        m.created_ms, a.issued_ms,
        "created when the cookie was issued"
    );
    assert_eq!(m.client.as_deref(), Some("203.0.113.9"));
    assert_eq!(m.agent.as_deref(), Some("TestBrowser/1.0"));
    assert!(m.last_seen_ms > 0);
    // A user binding alone is stored (no data needed).
    assert_eq!(data(&store, &b.id).await, Some(json!({})));
    let mut handles: Vec<String> = store
        .sessions_of(&user("alice"))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.handle)
        .collect();
    handles.sort();
    let mut expected = vec![a.id.handle(), b.id.handle()];
    expected.sort();
    assert_eq!(handles, expected);
    let listed = store.sessions_of(&user("alice")).await.unwrap();
    let first = listed.iter().find(|i| i.handle == a.id.handle()).unwrap();
    assert_eq!(first.client.as_deref(), Some("203.0.113.9"));
    assert!(
        !serde_json::to_string(&listed)
            .unwrap()
            .contains(&a.id.to_string()),
        "ids never listed"
    );
}

pub async fn rotation_keeps_the_user_and_creation_time_and_flush_unbinds<S: Store>(store: S) {
    let t = target();
    let mut changes = set("k", json!(1));
    changes.user = Some(user("alice"));
    apply(&store, &t, &changes).await;
    let rotated = apply(&store, &t, &rotate()).await;
    let m = meta(store.load(&rotated.id).await.unwrap());
    assert_eq!((m.user, m.created_ms), (Some(user("alice")), t.issued_ms));
    let listed: Vec<String> = store
        .sessions_of(&user("alice"))
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.handle)
        .collect();
    assert_eq!(
        listed,
        [rotated.id.handle()],
        "the index follows the rotation"
    );
    let flushed = apply(&store, &rotated, &flush()).await;
    assert!(
        store.sessions_of(&user("alice")).await.unwrap().is_empty(),
        "flush removes the binding"
    );
    assert_eq!(store.load(&flushed.id).await.unwrap(), Lookup::Unknown);
}

pub async fn revoke_others_ends_every_other_session_of_the_user<S: Store>(store: S) {
    let (a, b, c, bob) = (target(), target(), target(), target());
    for t in [&a, &b, &c] {
        apply(&store, t, &bind("alice")).await;
    }
    apply(&store, &bob, &bind("bob")).await;
    let changes = Changes {
        revoke_others: true,
        ..Changes::default()
    };
    match store.apply(&b, &changes, &Origin::default()).await.unwrap() {
        Outcome::Applied { revoked, .. } => assert_eq!(revoked, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.load(&a.id).await.unwrap(), Lookup::Dead);
    assert_eq!(store.load(&c.id).await.unwrap(), Lookup::Dead);
    assert!(matches!(store.load(&b.id).await.unwrap(), Lookup::Live(_)));
    assert!(
        matches!(store.load(&bob.id).await.unwrap(), Lookup::Live(_)),
        "other users untouched"
    );
    assert_eq!(store.sessions_of(&user("alice")).await.unwrap().len(), 1);
}

pub async fn sessions_can_be_revoked_one_by_handle_or_all<S: Store>(store: S) {
    let (a, b, c) = (target(), target(), target());
    for t in [&a, &b, &c] {
        apply(&store, t, &bind("alice")).await;
    }
    assert!(
        store
            .revoke_handle(&user("alice"), &b.id.handle())
            .await
            .unwrap()
    );
    assert!(
        !store
            .revoke_handle(&user("alice"), &b.id.handle())
            .await
            .unwrap(),
        "already ended"
    );
    assert!(
        !store
            .revoke_handle(&user("bob"), &a.id.handle())
            .await
            .unwrap(),
        "not bob's"
    );
    assert_eq!(store.load(&b.id).await.unwrap(), Lookup::Dead);
    assert_eq!(store.revoke_user(&user("alice"), None).await.unwrap(), 2);
    assert_eq!(store.load(&a.id).await.unwrap(), Lookup::Dead);
    assert_eq!(store.load(&c.id).await.unwrap(), Lookup::Dead);
    assert!(store.sessions_of(&user("alice")).await.unwrap().is_empty());
    assert_held!(&store, 0);
}

pub async fn expired_sessions_leave_the_user_index<S: Store>(store: S) {
    let t = target();
    apply(&store, &t, &bind("alice")).await;
    assert_eq!(store.sessions_of(&user("alice")).await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    store.sweep().await.unwrap();
    assert!(store.sessions_of(&user("alice")).await.unwrap().is_empty());
    assert_eq!(store.revoke_user(&user("alice"), None).await.unwrap(), 0);
}

/// Short timeouts for the expiry tests: idle 1 s, absolute 2 s.
pub fn short_policy() -> Policy {
    Policy {
        idle_ms: 1_000,
        absolute_ms: 2_000,
        ..policy()
    }
}

/// Idle 1 s, absolute far away: only idleness ends the session.
pub fn idle_policy() -> Policy {
    Policy {
        idle_ms: 1_000,
        ..policy()
    }
}

/// Generates the suite for one store: `$make` is an async fn(Policy) ->
/// (guard, store); `$($extra)*` are cases only some stores promise.
macro_rules! conformance {
    ($store:ident, $make:expr $(, $extra:ident)*) => {
        mod $store {
            use super::*;

            macro_rules! case {
                ($name:ident, $policy:expr) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        // The guard keeps what the store needs (a server) alive.
                        let (_guard, store) = ($make)($policy).await;
                        super::$name(store).await;
                    }
                };
            }

            case!(unknown_ids_are_unknown, policy());
            case!(set_then_load_returns_the_data, policy());
            case!(deleting_every_key_leaves_an_unknown_not_a_dead_id, policy());
            case!(parallel_writes_to_different_keys_are_all_kept, policy());
            case!(rotate_moves_the_data_and_kills_the_old_id, policy());
            case!(rotating_a_never_stored_session_kills_its_id, policy());
            case!(
                a_write_in_flight_during_a_rotation_lands_in_the_new_session,
                policy()
            );
            case!(
                flush_destroys_the_session_and_a_late_write_is_dropped,
                policy()
            );
            case!(
                flush_with_sets_starts_a_new_session_with_only_those,
                policy()
            );
            case!(an_oversized_change_is_refused_whole, policy());
            case!(an_idle_session_expires, idle_policy());
            case!(a_session_expires_at_its_absolute_deadline, short_policy());
            case!(sweep_removes_expired_sessions, short_policy());
            case!(a_bound_user_is_indexed_with_its_metadata, policy());
            case!(rotation_keeps_the_user_and_creation_time_and_flush_unbinds, policy());
            case!(revoke_others_ends_every_other_session_of_the_user, policy());
            case!(sessions_can_be_revoked_one_by_handle_or_all, policy());
            case!(expired_sessions_leave_the_user_index, short_policy());
            $(case!($extra, Policy { max_sessions: 2, ..policy() });)*
        }
    };
}

conformance!(
    memory,
    |policy| async move { ((), sessiongate::store::memory::MemoryStore::new(policy)) },
    a_full_store_refuses_new_sessions_but_serves_existing_ones
);

/// A fresh database file under the target's temp dir (kept after the test
/// for inspection; reader connections reopen it by path).
fn disk_path() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("conformance");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!(
        "{}.db",
        Id::random().to_string().replace(['-', '_'], "x")
    ))
}

fn disk_store(policy: Policy, cache_bytes: u64) -> sessiongate::store::disk::DiskStore {
    use sessiongate::config::Durability;
    use sessiongate::store::disk::{DiskOptions, DiskStore};
    let options = DiskOptions {
        path: disk_path(),
        durability: Durability::Immediate,
        max_file_bytes: None,
        cache_bytes,
    };
    DiskStore::open(options, policy).unwrap()
}

// With its read cache (the default), and without: both must keep the contract.
conformance!(
    disk,
    |policy| async move { ((), disk_store(policy, 64 << 20)) },
    a_full_store_refuses_new_sessions_but_serves_existing_ones
);

conformance!(
    disk_uncached,
    |policy| async move { ((), disk_store(policy, 0)) },
    a_full_store_refuses_new_sessions_but_serves_existing_ones
);

// Redis does not cap the number of sessions (use Redis's maxmemory with
// the noeviction policy): the full-store case does not apply.
conformance!(redis, |policy| async move {
    use sessiongate::store::redis::{RedisOptions, RedisStore};
    let server = support::redis::RedisServer::start();
    let options = RedisOptions {
        url: server.url(),
        key_prefix: "conformance:".to_owned(),
        cluster: false,
        timeout: Duration::from_secs(2),
        touch_interval: Duration::from_millis(100),
    };
    (server, RedisStore::connect(options, policy).unwrap())
});
