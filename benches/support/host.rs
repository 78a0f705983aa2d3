//! The host API's reads at scale, each against its raw limit in the same run:
//!
//! - `status`: [`Engine::status`] of random workspaces among N on SQLite
//!   (the record, the agent's credentials, decoded and assembled) against a
//!   raw indexed read of the same rows (the same two statements through
//!   rusqlite, the text read and not decoded);
//! - `list`: [`Engine::list`] pages (by labels, then by state and cloud, 100
//!   a page) against the same statement through rusqlite;
//! - the event feed's delivery lag across two replicas on PostgreSQL: one
//!   replica commits events, a consumer on the other watches the feed.
//!
//! Both sides of a ratio run one call at a time, alternately, three rounds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cogrion::providers::sqlite::SqliteStore;
use cogrion::sim::{FaultPlan, SimulatedCloud, SimulatedWorld};
use cogrion::store::{
    AgentCredential, CertSerial, WorkspaceRecord, WorkspaceStore, WorkspaceWrite,
};
use cogrion::*;
use rand::seq::SliceRandom;
use tokio::runtime::Runtime;

fn spec() -> WorkspaceSpec {
    cogrion::conformance::sample_workspace_spec()
}

/// An engine over `store` (no transport: the status reports the store's
/// view of the agent).
fn engine(store: Arc<dyn WorkspaceStore>, config: EngineConfig) -> Engine {
    let world = SimulatedWorld::new(SimulatedCloud::new(), FaultPlan::none());
    world
        .engine_builder(store, Arc::new(SystemClock))
        .config(config)
        .build()
        .unwrap()
}

/// `n` workspaces in assorted states, labelled `team=t<i % 20>` and
/// `env=prod|dev`, each with an agent certificate.
async fn populate(store: &dyn WorkspaceStore, n: usize) -> Vec<WorkspaceId> {
    let now = SystemClock.now();
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut writes = Vec::new();
        for &i in chunk {
            let id: WorkspaceId = format!("ws-{i:06}").parse().unwrap();
            let mut record = WorkspaceRecord::new(id.clone(), spec(), now);
            record.state = match i % 10 {
                0 => WorkspaceState::Provisioning,
                1 => WorkspaceState::Destroyed,
                _ => WorkspaceState::Active,
            };
            record.labels = Labels::new()
                .with("team", &format!("t{}", i % 20))
                .unwrap()
                .with("env", if i % 3 == 0 { "prod" } else { "dev" })
                .unwrap();
            writes.push(WorkspaceWrite::create(record, now));
            ids.push(id);
        }
        for r in store.commit_batch(writes).await {
            r.unwrap();
        }
        for &i in chunk {
            let serial = CertSerial::new(format!("{:032x}", i + 1)).unwrap();
            store
                .put_credential(AgentCredential::new(
                    ids[i].clone(),
                    serial,
                    now,
                    now + Duration::from_secs(86_400),
                ))
                .await
                .unwrap();
        }
    }
    ids
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The raw side: the same rows through rusqlite, read-only.
struct Raw(rusqlite::Connection);

impl Raw {
    fn status(&self, id: &WorkspaceId) -> usize {
        let mut record = self
            .0
            .prepare_cached("SELECT revision, record FROM workspaces WHERE id = ?1")
            .unwrap();
        let bytes: usize = record
            .query_row([id.as_str()], |r| Ok(r.get::<_, String>(1)?.len()))
            .unwrap();
        let mut credentials = self
            .0
            .prepare_cached("SELECT body FROM credentials WHERE workspace = ?1 ORDER BY serial")
            .unwrap();
        let rows = credentials
            .query_map([id.as_str()], |r| Ok(r.get::<_, String>(0)?.len()))
            .unwrap();
        bytes + rows.map(|r| r.unwrap()).sum::<usize>()
    }

    /// A page of the listing: labels as JSON (or none), a state (or none),
    /// after an id (or none).
    fn list(&self, labels: Option<&str>, state: Option<&str>, after: Option<&str>) -> Vec<String> {
        let mut page = self
            .0
            .prepare_cached(
                "SELECT w.id, w.tenant, w.cloud, w.state, w.labels, w.revision FROM workspaces w \
                 WHERE (?1 IS NULL OR w.state = ?1) AND (?2 IS NULL OR w.id > ?2) AND (?3 IS NULL OR w.cloud = ?3) \
                 AND (?4 IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(?4) s \
                   WHERE json_extract(w.labels, '$.\"' || s.key || '\"') IS NOT s.value)) \
                 ORDER BY w.id LIMIT 100",
            )
            .unwrap();
        page.query_map(
            rusqlite::params![state, after, state.map(|_| "simulated"), labels],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
    }
}

/// Status and list calls/s at `n` workspaces on SQLite, against the raw
/// reads of the same rows.
pub(crate) fn report_reads(rt: &Runtime, n: usize) {
    let dir = std::env::temp_dir().join(format!("cogrion-bench-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("host.db");
    let store = Arc::new(rt.block_on(SqliteStore::open(&path)).unwrap());
    let ids = rt.block_on(populate(store.as_ref(), n));
    let engine = engine(store.clone(), EngineConfig::new("bench".parse().unwrap()));
    let raw = Raw(rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap());
    let calls = 20_000;
    let mut sample: Vec<WorkspaceId> = (0..calls).map(|i| ids[i % ids.len()].clone()).collect();
    sample.shuffle(&mut rand::rng());

    let (mut status_ratio, mut status_ours, mut status_raw) = (vec![], vec![], vec![]);
    let (mut list_ratio, mut list_ours, mut list_raw) = (vec![], vec![], vec![]);
    for _ in 0..3 {
        let t = Instant::now();
        let mut bytes = 0;
        for id in &sample {
            bytes += raw.status(id);
        }
        let raw_rate = calls as f64 / t.elapsed().as_secs_f64();
        std::hint::black_box(bytes);
        let t = Instant::now();
        rt.block_on(async {
            for id in &sample {
                std::hint::black_box(engine.status(id).await.unwrap());
            }
        });
        let ours = calls as f64 / t.elapsed().as_secs_f64();
        status_ratio.push(ours / raw_rate);
        status_ours.push(ours);
        status_raw.push(raw_rate);

        // Every team's workspaces, page by page; then the Active ones.
        let queries: Vec<(Option<String>, Option<&str>)> = (0..20)
            .map(|t| (Some(format!("{{\"team\":\"t{t}\"}}")), None))
            .chain([(None, Some("active"))])
            .collect();
        let t = Instant::now();
        let mut raw_pages = 0;
        for (labels, state) in &queries {
            let mut after: Option<String> = None;
            loop {
                let page = raw.list(labels.as_deref(), *state, after.as_deref());
                raw_pages += 1;
                if page.len() < 100 {
                    break;
                }
                after = page.last().cloned();
            }
        }
        let raw_rate = raw_pages as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let pages = rt.block_on(async {
            let mut pages = 0;
            for (labels, state) in &queries {
                let mut query = ListQuery::new().limit(100);
                if let Some(labels) = labels {
                    query = query.labels(serde_json::from_str(labels).unwrap());
                }
                if state.is_some() {
                    query = query.state(StateName::Active).cloud(CloudKind::Simulated);
                }
                let mut next = Some(query);
                while let Some(q) = next {
                    let page = engine.list(&q).await.unwrap();
                    pages += 1;
                    next = page.next;
                }
            }
            pages
        });
        let ours = pages as f64 / t.elapsed().as_secs_f64();
        list_ratio.push(ours / raw_rate);
        list_ours.push(ours);
        list_raw.push(raw_rate);
    }
    println!(
        "REPORT host status: {n} workspaces on SQLite, {calls} calls a round, one at a time: Engine::status {:.0}/s vs raw indexed read of the same rows {:.0}/s -> ratio {:.3} (rounds {:?})",
        median(status_ours),
        median(status_raw),
        median(status_ratio.clone()),
        status_ratio
            .iter()
            .map(|r| (r * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    println!(
        "REPORT host list: {n} workspaces on SQLite, pages of 100 (by a label, 20 teams; by state and cloud): Engine::list {:.0} pages/s vs the same statement raw {:.0} pages/s -> ratio {:.3} (rounds {:?})",
        median(list_ours),
        median(list_raw),
        median(list_ratio.clone()),
        list_ratio
            .iter()
            .map(|r| (r * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    drop(engine);
    drop(store);
    std::fs::remove_dir_all(dir).ok();
}

/// The feed's delivery lag across two replicas on PostgreSQL: replica A
/// commits 400 events (a label change every 10 ms); a consumer watching on
/// replica B records when each arrives. Run with B's poll interval at its
/// default and at 50 ms.
#[cfg(feature = "postgres")]
pub(crate) fn report_feed_lag(rt: &Runtime, url: &str) {
    use cogrion::providers::postgres::PostgresStore;
    use futures::StreamExt;
    for poll in [Duration::from_millis(250), Duration::from_millis(50)] {
        let lags = rt.block_on(async {
            let a = engine(
                Arc::new(PostgresStore::connect(url).await.unwrap()),
                EngineConfig::new("bench-a".parse().unwrap()),
            );
            let b = engine(
                Arc::new(PostgresStore::connect(url).await.unwrap()),
                EngineConfig::new("bench-b".parse().unwrap()).with_feed_poll(poll),
            );
            let prefix = format!("lag{:x}-", rand::random::<u32>());
            let ids: Vec<WorkspaceId> = (0..20)
                .map(|i| format!("{prefix}{i}").parse().unwrap())
                .collect();
            for id in &ids {
                a.create(
                    id.clone(),
                    spec(),
                    Actor::Engine {
                        holder: "bench-a".parse().unwrap(),
                    },
                )
                .await
                .unwrap();
            }
            let committed: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
            let head = b.feed_head().await.unwrap();
            let mut stream = Box::pin(b.watch(head));
            let writer = {
                let (a, ids, committed) = (a.clone(), ids.clone(), committed.clone());
                tokio::spawn(async move {
                    for i in 0..400u32 {
                        let id = &ids[i as usize % ids.len()];
                        let labels = Labels::new().with("seq", &i.to_string()).unwrap();
                        a.set_labels(
                            id,
                            labels,
                            Actor::Engine {
                                holder: "bench-a".parse().unwrap(),
                            },
                        )
                        .await
                        .unwrap();
                        committed.lock().unwrap().insert(i, Instant::now());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
            };
            let mut lags = Vec::new();
            while lags.len() < 400 {
                let event = stream.next().await.unwrap().unwrap();
                let arrived = Instant::now();
                if !event.workspace.as_str().starts_with(&prefix) {
                    continue;
                }
                let Some(seq) = event
                    .event
                    .event
                    .message
                    .strip_prefix("labels {seq=")
                    .and_then(|m| m.split('}').next())
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                // The writer notes the commit just after its call returns; an
                // event that arrives first has a lag of (about) zero.
                let at = loop {
                    if let Some(at) = committed.lock().unwrap().get(&seq).copied() {
                        break at;
                    }
                    tokio::task::yield_now().await;
                };
                lags.push(arrived.saturating_duration_since(at).as_secs_f64() * 1000.0);
            }
            writer.await.unwrap();
            lags
        });
        let mut sorted = lags.clone();
        sorted.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
        println!(
            "REPORT host feed lag: two replicas on PostgreSQL, 400 events at 100/s, consumer polling every {} ms: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            poll.as_millis(),
            pct(0.5),
            pct(0.99),
            sorted[sorted.len() - 1]
        );
    }
}
