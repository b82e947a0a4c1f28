//! Performance benchmark harness of `dingtalk-relay`: `cargo bench --bench relay`.
//!
//! Starts the RELEASE relay binary as a child process with a generated config (what users
//! run), an in-process fake DingTalk (the `sandbox` module, served on its own tokio runtime,
//! behind a "gate" that answers 503 while closed so deliveries can be queued), and a bare
//! axum server answering 202 (the ceiling: this same binary re-executed with
//! `--bare-server`). A reqwest load generator with N concurrent workers measures intake
//! (next to the SQLite store alone, called in-process: the store's own ceiling),
//! end-to-end latency, drain at DingTalk's rate limit, token single-flight, memory, startup,
//! scaling on PostgreSQL and synchronous `?wait=`. Every scenario prints a markdown table
//! row; the run writes `benches/results/latest.json` and plots it with `benches/plot.py`.
//!
//! Flags (after `--`): `--measure-secs N` (per intake point, default 5), `--soak-secs N`
//! (default 60), `--soak-rate N` (webhooks/s during the soak, default 50), `--skip-plot`.
//! `--load URL C SECS` runs only the load generator (C closed-loop clients, SECS seconds after
//! a 1 s warmup) against a relay started by hand, to profile it.
//! PostgreSQL scenarios run when `DINGTALK_RELAY_TEST_POSTGRES_URL` is set.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a benchmark harness reports its tables on stdout"
)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::IntoResponse;
use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use serde_json::{Value, json};

const SECRET: &str = "bench-s3cret";
const ID_TEMPLATE: &str = "{id: \"sandbox-daily-report-template\", fields: [{name: \"今日完成工作\", sort: 0}, {name: \"未完成工作\", sort: 1}, {name: \"需协调工作\", sort: 2}]}";
const POSTGRES_URL_VAR: &str = "DINGTALK_RELAY_TEST_POSTGRES_URL";
const CONCURRENCIES: [usize; 3] = [1, 16, 64];

/// Unique run ids across the whole run (dedup must never merge two bench webhooks).
static NEXT_RUN: AtomicU64 = AtomicU64::new(1);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bare-server") {
        bare_server();
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--load") {
        // `--load URL CONCURRENCY SECONDS`: only the load generator, against a relay started
        // by hand (for profiling it with perf or callgrind).
        let arg = |k: usize| args.get(i + k).cloned().unwrap_or_default();
        load_only(
            &arg(1),
            arg(2).parse().unwrap_or(16),
            arg(3).parse().unwrap_or(10),
        );
        return;
    }
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let opts = Opts {
        measure: Duration::from_secs(flag("--measure-secs", 5)),
        soak: Duration::from_secs(flag("--soak-secs", 60)),
        soak_rate: flag("--soak-rate", 50),
        plot: !args.iter().any(|a| a == "--skip-plot"),
    };
    // The fake DingTalk gets its own runtime (own threads) so the load generator cannot
    // starve it; the load generator runs on the main runtime.
    let fake_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-dingtalk")
        .enable_all()
        .build()
        .expect("fake runtime");
    let main_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    main_rt.block_on(run(opts, fake_rt.handle().clone()));
    fake_rt.shutdown_background();
}

fn load_only(url: &str, concurrency: usize, secs: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("load runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let window = Duration::from_secs(secs);
        let s = closed_loop(
            &http,
            &[url.to_owned()],
            concurrency,
            Duration::from_secs(1),
            window,
            202,
        )
        .await;
        println!(
            "c={concurrency}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, non-202 {}",
            s.rps(),
            s.pct(50.0),
            s.pct(99.0),
            s.max(),
            s.failed
        );
    });
}

struct Opts {
    measure: Duration,
    soak: Duration,
    soak_rate: u64,
    plot: bool,
}

// ---------------------------------------------------------------------------------------
// The ceiling: a bare axum handler answering 202, in a child process like the relay.

fn bare_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        async fn accept(_body: bytes::Bytes) -> impl IntoResponse {
            (
                axum::http::StatusCode::ACCEPTED,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                r#"{"delivery_id":"00000000-0000-0000-0000-000000000000","status":"queued"}"#,
            )
        }
        let app = axum::Router::new().route("/v1/hooks/{route}", axum::routing::post(accept));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", listener.local_addr().expect("addr").port());
        axum::serve(listener, app).await.expect("serve");
    });
}

struct Bare {
    child: Child,
    url: String,
}

fn start_bare() -> Bare {
    let mut child = Command::new(std::env::current_exe().expect("own exe"))
        .arg("--bare-server")
        .stdout(Stdio::piped())
        .spawn()
        .expect("bare server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port line");
    Bare {
        child,
        url: format!("http://127.0.0.1:{}/v1/hooks/ci", line.trim()),
    }
}

// ---------------------------------------------------------------------------------------
// The fake DingTalk behind a gate.

struct Fake {
    fake: FakeDingTalk,
    base_url: String,
    gate_closed: Arc<AtomicBool>,
}

async fn gate(
    State(closed): State<Arc<AtomicBool>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if closed.load(Ordering::SeqCst) {
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "gate closed").into_response();
    }
    next.run(request).await
}

fn spawn_fake(rt: &tokio::runtime::Handle, options: FakeOptions) -> Fake {
    let fake = FakeDingTalk::new(options);
    let gate_closed = Arc::new(AtomicBool::new(false));
    let router = fake.router().layer(axum::middleware::from_fn_with_state(
        gate_closed.clone(),
        gate,
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake");
    listener.set_nonblocking(true).expect("nonblocking");
    let base_url = format!("http://{}", listener.local_addr().expect("addr"));
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let _ = axum::serve(listener, router).await;
    });
    Fake {
        fake,
        base_url,
        gate_closed,
    }
}

// ---------------------------------------------------------------------------------------
// The relay binary as a child process.

#[derive(Clone)]
struct RelayConfig {
    store_url: String,
    max_qps: u32,
    initial_backoff: &'static str,
    max_backoff: &'static str,
    concurrency: u32,
}

impl RelayConfig {
    fn sqlite(dir: &Path) -> Self {
        Self {
            store_url: format!("sqlite://{}", dir.join("relay.db").display()),
            max_qps: 20,
            initial_backoff: "200ms",
            max_backoff: "1s",
            concurrency: 8,
        }
    }
}

fn relay_yaml(config: &RelayConfig, base_url: &str) -> String {
    format!(
        r#"server:
  listen: "127.0.0.1:0"
  admin_listen: "127.0.0.1:0"
dingtalk:
  base_url: "{base_url}"
  timeout: 2s
  max_qps: {max_qps}
  apps:
    default:
      app_key: "sandbox-app-key"
      app_secret: "sandbox-app-secret"
store:
  url: "{store}"
  max_queued: 10000000
delivery:
  max_attempts: 100
  initial_backoff: {initial_backoff}
  max_backoff: {max_backoff}
  dedup_window: 1h
  concurrency: {concurrency}
  lease: 10s
timezone: "Asia/Shanghai"
log: {{format: json, filter: info}}
users:
  octocat: "dd_octo"
routes:
  ci:
    source: generic
    secret: "{SECRET}"
    template: {ID_TEMPLATE}
    author: "manager01"
    to_userids: ["lead01"]
"#,
        max_qps = config.max_qps,
        store = config.store_url,
        initial_backoff = config.initial_backoff,
        max_backoff = config.max_backoff,
        concurrency = config.concurrency,
    )
}

struct Relay {
    child: Child,
    hook_url: String,
    startup: Duration,
    log_bytes: Arc<AtomicU64>,
    log_lines: Arc<AtomicU64>,
}

impl Relay {
    fn rss_mib(&self) -> f64 {
        rss_mib(self.child.id())
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Writes the config into `dir`, starts the release binary, waits for `/readyz` 200.
async fn start_relay(
    http: &reqwest::Client,
    dir: &Path,
    name: &str,
    config: &RelayConfig,
    base_url: &str,
) -> Relay {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, relay_yaml(config, base_url)).expect("write config");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_dingtalk-relay"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the relay binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let log_bytes = Arc::new(AtomicU64::new(0));
    let log_lines = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (log_bytes, log_lines) = (log_bytes.clone(), log_lines.clone());
        std::thread::spawn(move || {
            let mut sent = false;
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        log_bytes.fetch_add(n as u64, Ordering::Relaxed);
                        log_lines.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !sent
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "dingtalk-relay listening"
                {
                    let _ = tx.send((v["port"].as_u64(), v["admin_port"].as_u64()));
                    sent = true;
                } else if !sent && line.contains("ERROR") {
                    eprint!("relay: {line}");
                }
            }
            // Keep draining is done above; a closed pipe ends the thread.
            let _ = reader.read_to_end(&mut Vec::new());
        });
    }
    let (port, admin_port) = tokio::task::spawn_blocking(move || {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the relay logs its ports")
    })
    .await
    .expect("join");
    let admin = format!("http://127.0.0.1:{}", admin_port.expect("admin port"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{admin}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "relay never became ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let startup = started.elapsed();
    Relay {
        child,
        hook_url: format!("http://127.0.0.1:{}/v1/hooks/ci", port.expect("port")),
        startup,
        log_bytes,
        log_lines,
    }
}

// ---------------------------------------------------------------------------------------
// Load generation.

fn body(n: u64) -> String {
    format!(
        r#"{{"type":"job_status","job":"build","status":"success","project":"acme/api","pipeline":"CI","run_id":"{n}","branch":"main","commit":"9f2c1e7","commit_message":"Fix flaky test","url":"https://ci.example.com/runs/{n}","actor":"octocat","duration_secs":192,"summary":"bench run {n}"}}"#
    )
}

fn next_run() -> u64 {
    NEXT_RUN.fetch_add(1, Ordering::Relaxed)
}

/// One webhook: `(status or 0 on a transport error, latency)`.
async fn post(http: &reqwest::Client, url: &str, n: u64) -> (u16, Duration) {
    let started = Instant::now();
    let result = http
        .post(url)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {SECRET}"))
        .body(body(n))
        .send()
        .await;
    let status = match result {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    };
    (status, started.elapsed())
}

#[derive(Default)]
struct Sample {
    ok: u64,
    failed: u64,
    secs: f64,
    lat_ms: Vec<f64>,
}

impl Sample {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.secs
    }
    fn pct(&self, p: f64) -> f64 {
        percentile(&self.lat_ms, p)
    }
    fn max(&self) -> f64 {
        self.lat_ms.last().copied().unwrap_or(f64::NAN)
    }
    fn json(&self) -> Value {
        json!({"ok": self.ok, "failed": self.failed, "secs": self.secs, "rps": self.rps(),
            "p50_ms": self.pct(50.0), "p99_ms": self.pct(99.0), "max_ms": self.max()})
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64) * p / 100.0).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

/// `concurrency` closed-loop workers (worker i posts to `urls[i % len]`) for `warmup` +
/// `measure`; only requests started after the warmup and finished in the window count.
/// Each worker is bounded to 1,000,000 requests.
async fn closed_loop(
    http: &reqwest::Client,
    urls: &[String],
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    ok_status: u16,
) -> Sample {
    let http = http.clone();
    let urls = urls.to_vec();
    closed_loop_with(concurrency, warmup, measure, ok_status, move |worker, n| {
        let http = http.clone();
        let url = urls[worker % urls.len()].clone();
        async move { post(&http, &url, n).await }
    })
    .await
}

/// The closed loop of [`closed_loop`] around any operation: `op(worker, run)` answers
/// `(status, latency)`.
async fn closed_loop_with<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    ok_status: u16,
    op: F,
) -> Sample
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = (u16, Duration)> + Send,
{
    let start = Instant::now();
    let window_start = start + warmup;
    let end = window_start + measure;
    let mut workers = Vec::new();
    for i in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut s = Sample::default();
            for _ in 0..1_000_000u32 {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let (status, lat) = op(i, next_run()).await;
                if sent >= window_start && sent + lat <= end {
                    if status == ok_status {
                        s.ok += 1;
                        s.lat_ms.push(lat.as_secs_f64() * 1e3);
                    } else {
                        s.failed += 1;
                    }
                }
            }
            s
        }));
    }
    let mut total = Sample {
        secs: measure.as_secs_f64(),
        ..Sample::default()
    };
    for w in workers {
        let s = w.await.expect("worker");
        total.ok += s.ok;
        total.failed += s.failed;
        total.lat_ms.extend(s.lat_ms);
    }
    total.lat_ms.sort_by(f64::total_cmp);
    total
}

/// The draft and dedup key the relay makes of `body(n)`: the bench relay's configuration
/// mapped by the relay's own code (`prepare`, as the webhook handler and `render` do).
fn relay_prepares(dir: &Path, n: u64) -> (dingtalk_relay::mapping::ReportDraft, String) {
    use dingtalk_relay::inbound::webhook::{Prepared, prepare};
    let yaml = relay_yaml(&RelayConfig::sqlite(dir), "http://127.0.0.1:9");
    let settings = dingtalk_relay::config::Settings::from_yaml(&yaml).expect("the bench config");
    let mapper = dingtalk_relay::mapping::Mapper::new(&settings).expect("the bench mapper");
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("header"));
    let body = body(n);
    let request = dingtalk_relay::sources::Request {
        headers: &headers,
        body: body.as_bytes(),
        target: "/v1/hooks/ci",
        method: "post",
        now: chrono::Utc::now(),
    };
    match prepare(&settings, &mapper, "ci", &request) {
        Ok(Prepared::Report {
            draft, dedup_key, ..
        }) => (draft, dedup_key),
        other => panic!("the bench webhook makes a report, not {other:?}"),
    }
}

/// The relay's dedup key for `body(n)` (a body without a delivery id: the route plus a SHA-256
/// of route and body), computed without mapping so that the store ceiling spends no CPU on it;
/// [`store_ceiling`] checks it against [`relay_prepares`].
fn relay_dedup_key(n: u64) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(b"ci\0");
    hash.update(body(n).as_bytes());
    format!("ci:sha256:{}", hex::encode(hash.finalize()))
}

/// The SQLite store alone, in this process: `concurrency` tasks calling `Store::enqueue` in a
/// closed loop with the draft the relay makes of the bench webhook. No HTTP, no parsing, no
/// mapping: the most durable webhooks per second the store's group commit manages here.
/// `sequential_keys`: dedup keys that sort in arrival order, instead of the relay's
/// `route:sha256:<hex>` for bodies without a delivery id (the experiment that prices the
/// random dedup-index page each webhook dirties).
async fn store_ceiling(
    path: &Path,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    sequential_keys: bool,
) -> Sample {
    use dingtalk_relay::store::{Enqueued, NewDelivery, SqliteStore, Store};
    let (draft, key) = relay_prepares(path.parent().expect("a directory"), 0);
    assert_eq!(
        key,
        relay_dedup_key(0),
        "the bench computes the relay's dedup key"
    );
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&path.display().to_string())
            .await
            .expect("the SQLite store opens"),
    );
    closed_loop_with(concurrency, warmup, measure, 202, move |_, n| {
        let store = store.clone();
        let draft = draft.clone();
        async move {
            let dedup_key = if sequential_keys {
                format!("ci:id:{n:020}")
            } else {
                relay_dedup_key(n)
            };
            let new = NewDelivery {
                id: uuid::Uuid::now_v7().to_string(),
                route: "ci".into(),
                dedup_key,
                body_key: None,
                draft,
                received_at: chrono::Utc::now(),
            };
            let started = Instant::now();
            let answer = store
                .enqueue(new, Duration::from_secs(3600), u64::MAX)
                .await;
            let status = match answer {
                Ok(Enqueued::Queued(_)) => 202,
                Ok(Enqueued::Duplicate(_)) => 200,
                Err(_) => 0,
            };
            (status, started.elapsed())
        }
    })
    .await
}

/// Posts `count` webhooks with at most `concurrency` in flight; returns the 202 count.
async fn enqueue(http: &reqwest::Client, url: &str, count: usize, concurrency: usize) -> usize {
    use futures::StreamExt;
    futures::stream::iter(0..count)
        .map(|_| post(http, url, next_run()))
        .buffer_unordered(concurrency)
        .filter(|(status, _)| std::future::ready(*status == 202))
        .count()
        .await
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The bench run number named by a report ("bench run N" in its contents).
fn report_run(report: &dingtalk_relay::sandbox::CreatedReport) -> Option<u64> {
    report.contents.iter().find_map(|c| {
        let rest = c.content.split("bench run ").nth(1)?;
        rest.split(|ch: char| !ch.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

async fn wait_reports(fake: &FakeDingTalk, count: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while fake.reports().len() < count {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn intake_row(target: &str, c: usize, s: &Sample) {
    println!(
        "| intake | {target:<22} | c={c:<3} | {:>8.0} req/s | p50 {:>6.2} ms | p99 {:>6.2} ms | max {:>7.2} ms | non-202 {} |",
        s.rps(),
        s.pct(50.0),
        s.pct(99.0),
        s.max(),
        s.failed
    );
}

// ---------------------------------------------------------------------------------------
// Scenarios.

async fn run(opts: Opts, fake_rt: tokio::runtime::Handle) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1100)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut results = serde_json::Map::new();
    let mut targets: Vec<Value> = Vec::new();
    let mut target = |name: &str, goal: &str, value: String, met: bool| {
        println!(
            "TARGET {name}: {value} (goal {goal}) -> {}",
            if met { "MET" } else { "MISSED" }
        );
        targets.push(json!({"target": name, "goal": goal, "value": value, "met": met}));
    };
    results.insert("machine".into(), machine());
    let warmup = Duration::from_secs(1);
    let mut startups: Vec<f64> = Vec::new();

    println!("\n## 1. Intake (generic job_status, durable store), bare 202 ceiling side by side");
    println!("| scenario | target | conc | throughput | p50 | p99 | max | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    let bare = start_bare();
    let fake = spawn_fake(&fake_rt, FakeOptions::default());
    let relay = start_relay(
        &http,
        dir.path(),
        "intake",
        &RelayConfig::sqlite(&dir.path().join("intake")),
        &fake.base_url,
    )
    .await;
    startups.push(ms(relay.startup));
    let mut intake = Vec::new();
    let log0 = relay.log_lines.load(Ordering::Relaxed);
    let logb0 = relay.log_bytes.load(Ordering::Relaxed);
    let mut relay_posts = 0;
    for c in CONCURRENCIES {
        let b = closed_loop(
            &http,
            std::slice::from_ref(&bare.url),
            c,
            warmup,
            opts.measure,
            202,
        )
        .await;
        intake_row("bare axum 202", c, &b);
        let r = closed_loop(
            &http,
            std::slice::from_ref(&relay.hook_url),
            c,
            warmup,
            opts.measure,
            202,
        )
        .await;
        relay_posts += r.ok;
        intake_row("relay sqlite", c, &r);
        intake.push(json!({"target": "bare", "store": null, "concurrency": c, "result": b.json()}));
        intake.push(
            json!({"target": "relay", "store": "sqlite", "concurrency": c, "result": r.json(),
            "ratio_to_bare": r.rps() / b.rps()}),
        );
        println!(
            "|  ratio relay/bare | | c={c} | {:.2} | | | | |",
            r.rps() / b.rps()
        );
        if c == 64 {
            let ratio = r.rps() / b.rps();
            target(
                "intake sqlite c=64 vs bare",
                ">= 50% (stretch 70%)",
                format!("{:.0}%", ratio * 100.0),
                ratio >= 0.5,
            );
        }
        if c == 16 {
            target(
                "intake sqlite p99 c=16",
                "<= 10 ms",
                format!("{:.2} ms", r.pct(99.0)),
                r.pct(99.0) <= 10.0,
            );
        }
    }
    let log_lines = relay.log_lines.load(Ordering::Relaxed) - log0;
    let log_bytes = relay.log_bytes.load(Ordering::Relaxed) - logb0;
    println!(
        "relay wrote {log_lines} log lines / {log_bytes} bytes during intake ({relay_posts} webhooks in the measured windows, more in warmups)"
    );
    results.insert(
        "intake_log".into(),
        json!({"log_lines": log_lines, "log_bytes": log_bytes, "measured_202": relay_posts}),
    );
    relay.stop();

    // The store's own ceiling, in this process with nothing else running: what the relay's
    // c=64 intake could reach if HTTP, parsing and mapping cost nothing.
    let mut ceiling = serde_json::Map::new();
    for (name, sequential) in [
        ("hashed dedup keys (as the relay)", false),
        ("sequential dedup keys (experiment)", true),
    ] {
        let path = dir.path().join(format!("ceiling-{sequential}.db"));
        let s = store_ceiling(&path, 64, warmup, opts.measure, sequential).await;
        intake_row(&format!("SQLite store alone, {name}"), 64, &s);
        ceiling.insert(
            if sequential {
                "sequential_keys"
            } else {
                "hashed_keys"
            }
            .into(),
            s.json(),
        );
    }
    results.insert("store_ceiling_c64".into(), Value::Object(ceiling));

    let pg_url = std::env::var(POSTGRES_URL_VAR).ok();
    let mut pg_databases = Vec::new();
    if let Some(url) = &pg_url {
        let db_url = fresh_postgres_database(url, &mut pg_databases).await;
        let config = RelayConfig {
            store_url: db_url,
            ..RelayConfig::sqlite(dir.path())
        };
        let relay = start_relay(&http, dir.path(), "intake-pg", &config, &fake.base_url).await;
        for c in CONCURRENCIES {
            let r = closed_loop(
                &http,
                std::slice::from_ref(&relay.hook_url),
                c,
                warmup,
                opts.measure,
                202,
            )
            .await;
            intake_row("relay postgres", c, &r);
            intake.push(json!({"target": "relay", "store": "postgres", "concurrency": c, "result": r.json()}));
        }
        relay.stop();
    } else {
        println!("postgres intake skipped: {POSTGRES_URL_VAR} is not set");
    }
    results.insert("intake".into(), Value::Array(intake));

    println!("\n## 2. End-to-end latency: webhook sent -> report created at the fake (5 ms fake)");
    let fake = spawn_fake(&fake_rt, FakeOptions::default());
    fake.fake.set_latency(Duration::from_millis(5));
    let relay = start_relay(
        &http,
        dir.path(),
        "e2e",
        &RelayConfig::sqlite(&dir.path().join("e2e")),
        &fake.base_url,
    )
    .await;
    startups.push(ms(relay.startup));
    let e2e_count = 150usize;
    let rate = 10.0;
    let mut sent_at = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut posts = Vec::new();
    for _ in 0..e2e_count {
        tick.tick().await;
        let n = next_run();
        sent_at.insert(n, unix_ms());
        let (http, url) = (http.clone(), relay.hook_url.clone());
        posts.push(tokio::spawn(async move { post(&http, &url, n).await }));
    }
    let mut accept_ms = Vec::new();
    for p in posts {
        let (status, lat) = p.await.expect("post");
        if status == 202 {
            accept_ms.push(ms(lat));
        }
    }
    accept_ms.sort_by(f64::total_cmp);
    wait_reports(&fake.fake, e2e_count, Duration::from_secs(30)).await;
    let mut e2e: Vec<f64> = fake
        .fake
        .reports()
        .iter()
        .filter_map(|r| Some((r.created_at_ms - sent_at.get(&report_run(r)?)?) as f64))
        .collect();
    e2e.sort_by(f64::total_cmp);
    println!(
        "| e2e | {rate}/s x {e2e_count} | reports {} | accept p50 {:.2} ms p99 {:.2} ms | e2e p50 {:.0} ms | p99 {:.0} ms | max {:.0} ms |",
        e2e.len(),
        percentile(&accept_ms, 50.0),
        percentile(&accept_ms, 99.0),
        percentile(&e2e, 50.0),
        percentile(&e2e, 99.0),
        e2e.last().copied().unwrap_or(f64::NAN)
    );
    target(
        "end-to-end p99 (5 ms fake, 10/s)",
        "<= 50 ms",
        format!("{:.0} ms", percentile(&e2e, 99.0)),
        percentile(&e2e, 99.0) <= 50.0 && e2e.len() == e2e_count,
    );
    results.insert("e2e".into(), json!({"rate_per_s": rate, "sent": e2e_count, "reported": e2e.len(),
        "accept_p50_ms": percentile(&accept_ms, 50.0), "accept_p99_ms": percentile(&accept_ms, 99.0),
        "p50_ms": percentile(&e2e, 50.0), "p99_ms": percentile(&e2e, 99.0),
        "max_ms": e2e.last().copied()}));
    relay.stop();

    println!("\n## 3. Drain 1,000 queued deliveries at max_qps 20 (fake qps_limit 20)");
    let drain = drain_scenario(
        &http,
        &fake_rt,
        dir.path(),
        "drain",
        &[RelayConfig::sqlite(&dir.path().join("drain"))],
        1000,
    )
    .await;
    startups.push(drain["startup_ms"].as_f64().unwrap_or(f64::NAN));
    let rate = drain["rate_per_s"].as_f64().unwrap_or(0.0);
    let rejected = drain["qps_rejections"].as_u64().unwrap_or(u64::MAX);
    target(
        "drain rate (sqlite)",
        ">= 19/s with 0 x 90018",
        format!("{rate:.2}/s, {rejected} x 90018"),
        rate >= 19.0 && rejected == 0 && drain["delivered"] == 1000,
    );
    results.insert("drain".into(), drain);

    println!("\n## 4. Token: 1,000 concurrent webhooks on a cold start");
    let fake = spawn_fake(&fake_rt, FakeOptions::default());
    fake.fake.set_latency(Duration::from_millis(20));
    let relay = start_relay(
        &http,
        dir.path(),
        "token",
        &RelayConfig {
            concurrency: 64,
            ..RelayConfig::sqlite(&dir.path().join("token"))
        },
        &fake.base_url,
    )
    .await;
    startups.push(ms(relay.startup));
    let idle_rss = relay.rss_mib();
    let before = fake.fake.gettoken_calls();
    let burst_start = Instant::now();
    let mut burst = Vec::new();
    for _ in 0..1000 {
        let (http, url) = (http.clone(), relay.hook_url.clone());
        burst.push(tokio::spawn(
            async move { post(&http, &url, next_run()).await },
        ));
    }
    let mut accepted = 0;
    let mut burst_ms = Vec::new();
    for b in burst {
        let (status, lat) = b.await.expect("post");
        if status == 202 {
            accepted += 1;
        }
        burst_ms.push(ms(lat));
    }
    let burst_secs = burst_start.elapsed().as_secs_f64();
    burst_ms.sort_by(f64::total_cmp);
    wait_reports(&fake.fake, 60, Duration::from_secs(20)).await;
    let tokens = fake.fake.gettoken_calls() - before;
    println!(
        "| token | 1000 concurrent | accepted {accepted} in {burst_secs:.2} s | p99 {:.0} ms | max {:.0} ms | gettoken calls {tokens} | reports so far {} |",
        percentile(&burst_ms, 99.0),
        burst_ms.last().copied().unwrap_or(f64::NAN),
        fake.fake.reports().len()
    );
    target(
        "gettoken on cold start with 1,000 webhooks",
        "exactly 1",
        tokens.to_string(),
        tokens == 1,
    );
    results.insert("token".into(), json!({"webhooks": 1000, "accepted": accepted, "burst_secs": burst_secs,
        "p99_ms": percentile(&burst_ms, 99.0), "max_ms": burst_ms.last().copied(), "gettoken_calls": tokens}));
    relay.stop();

    println!("\n## 5. Memory (RSS of the relay process)");
    let fake = spawn_fake(&fake_rt, FakeOptions::default());
    fake.gate_closed.store(true, Ordering::SeqCst);
    let relay = start_relay(
        &http,
        dir.path(),
        "memory",
        &RelayConfig {
            initial_backoff: "1s",
            max_backoff: "10m",
            ..RelayConfig::sqlite(&dir.path().join("memory"))
        },
        &fake.base_url,
    )
    .await;
    startups.push(ms(relay.startup));
    let fresh_idle = relay.rss_mib();
    let q_start = Instant::now();
    let queued = enqueue(&http, &relay.hook_url, 10_000, 32).await;
    let q_secs = q_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let queued_rss = relay.rss_mib();
    println!(
        "| memory | idle after start {fresh_idle:.1} MiB (token relay idle {idle_rss:.1} MiB) | 10,000 queued ({queued} accepted in {q_secs:.1} s, DingTalk down) {queued_rss:.1} MiB |"
    );
    relay.stop();

    // Soak: constant open-loop load with the fake answering; RSS sampled every 5 s.
    let fake = spawn_fake(&fake_rt, FakeOptions::default());
    let relay = start_relay(
        &http,
        dir.path(),
        "soak",
        &RelayConfig::sqlite(&dir.path().join("soak")),
        &fake.base_url,
    )
    .await;
    let soak = soak(&http, &relay, opts.soak, opts.soak_rate).await;
    println!(
        "| soak | {} s at {}/s | RSS start {:.1} MiB | end {:.1} MiB | max {:.1} MiB | growth {:.1} MiB | reports {} |",
        opts.soak.as_secs(),
        opts.soak_rate,
        soak["rss_start_mib"].as_f64().unwrap_or(f64::NAN),
        soak["rss_end_mib"].as_f64().unwrap_or(f64::NAN),
        soak["rss_max_mib"].as_f64().unwrap_or(f64::NAN),
        soak["growth_mib"].as_f64().unwrap_or(f64::NAN),
        fake.fake.reports().len(),
    );
    relay.stop();
    results.insert("memory".into(), json!({"idle_mib": fresh_idle, "idle_token_relay_mib": idle_rss,
        "queued_10000_mib": queued_rss, "queued_accepted": queued, "queue_secs": q_secs, "soak": soak}));

    println!("\n## 6. Startup: process start -> /readyz 200 (SQLite, fresh file)");
    startups.retain(|s| s.is_finite());
    startups.sort_by(f64::total_cmp);
    println!(
        "| startup | {} starts | min {:.0} ms | median {:.0} ms | max {:.0} ms |",
        startups.len(),
        startups.first().copied().unwrap_or(f64::NAN),
        percentile(&startups, 50.0),
        startups.last().copied().unwrap_or(f64::NAN)
    );
    results.insert(
        "startup_ms".into(),
        json!({"all": startups, "median": percentile(&startups, 50.0)}),
    );

    println!("\n## 7. Scaling on PostgreSQL: 1 vs 2 replicas");
    if let Some(url) = &pg_url {
        let mut scaling = Vec::new();
        for replicas in [1usize, 2] {
            let fake = spawn_fake(&fake_rt, FakeOptions::default());
            let db_url = fresh_postgres_database(url, &mut pg_databases).await;
            let config = RelayConfig {
                store_url: db_url.clone(),
                ..RelayConfig::sqlite(dir.path())
            };
            let mut relays = Vec::new();
            for i in 0..replicas {
                relays.push(
                    start_relay(
                        &http,
                        dir.path(),
                        &format!("pg-{replicas}-{i}"),
                        &config,
                        &fake.base_url,
                    )
                    .await,
                );
            }
            let urls: Vec<String> = relays.iter().map(|r| r.hook_url.clone()).collect();
            let r = closed_loop(&http, &urls, 64, warmup, opts.measure, 202).await;
            intake_row(&format!("postgres {replicas} replica(s)"), 64, &r);
            for relay in relays {
                relay.stop();
            }
            let configs = vec![
                RelayConfig {
                    store_url: fresh_postgres_database(url, &mut pg_databases).await,
                    ..RelayConfig::sqlite(dir.path())
                };
                replicas
            ];
            let d = drain_scenario(
                &http,
                &fake_rt,
                dir.path(),
                &format!("pg-drain-{replicas}"),
                &configs,
                400,
            )
            .await;
            scaling.push(json!({"replicas": replicas, "intake_c64": r.json(), "drain": d}));
        }
        results.insert("scaling_postgres".into(), Value::Array(scaling));
    } else {
        println!("skipped: {POSTGRES_URL_VAR} is not set");
    }

    println!("\n## 8. Synchronous mode ?wait=5 (fake answers at once, max_qps 20)");
    let fake = spawn_fake(&fake_rt, FakeOptions::default());
    let relay = start_relay(
        &http,
        dir.path(),
        "sync",
        &RelayConfig::sqlite(&dir.path().join("sync")),
        &fake.base_url,
    )
    .await;
    let mut sync = Vec::new();
    for c in [1usize, 16] {
        let url = format!("{}?wait=5", relay.hook_url);
        let s = closed_loop(&http, &[url], c, warmup, opts.measure, 201).await;
        println!(
            "| sync ?wait=5 | c={c} | {:.1} req/s | p50 {:.1} ms | p99 {:.1} ms | max {:.1} ms | non-201 {} |",
            s.rps(),
            s.pct(50.0),
            s.pct(99.0),
            s.max(),
            s.failed
        );
        sync.push(json!({"concurrency": c, "result": s.json()}));
    }
    results.insert("sync_wait".into(), Value::Array(sync));
    relay.stop();

    if let Some(url) = &pg_url {
        drop_postgres_databases(url, &pg_databases).await;
    }
    let mut bare = bare;
    let _ = bare.child.kill();
    let _ = bare.child.wait();

    results.insert("targets".into(), Value::Array(targets));
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out_dir).expect("results dir");
    let json_path = out_dir.join("latest.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&Value::Object(results)).expect("json"),
    )
    .expect("write results");
    println!("\nwrote {}", json_path.display());
    if opts.plot {
        plot(&json_path, &out_dir.join("intake.png"));
    }
}

/// Queues `count` deliveries while the fake answers 503, opens it, and times the drain.
/// With several configs, one replica per config (same store) shares the load.
async fn drain_scenario(
    http: &reqwest::Client,
    fake_rt: &tokio::runtime::Handle,
    dir: &Path,
    name: &str,
    configs: &[RelayConfig],
    count: usize,
) -> Value {
    let fake = spawn_fake(fake_rt, FakeOptions::default());
    fake.gate_closed.store(true, Ordering::SeqCst);
    let mut relays = Vec::new();
    for (i, config) in configs.iter().enumerate() {
        relays.push(start_relay(http, dir, &format!("{name}-{i}"), config, &fake.base_url).await);
    }
    let startup_ms = ms(relays[0].startup);
    let mut queued = 0;
    for relay in &relays {
        queued += enqueue(http, &relay.hook_url, count / relays.len(), 16).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rejections_before = fake.fake.qps_rejections();
    let opened = Instant::now();
    let opened_ms = unix_ms();
    fake.gate_closed.store(false, Ordering::SeqCst);
    let done = wait_reports(&fake.fake, queued, Duration::from_secs(180)).await;
    let wall = opened.elapsed().as_secs_f64();
    let reports = fake.fake.reports();
    let rejections = fake.fake.qps_rejections() - rejections_before;
    let first = reports.first().map_or(0, |r| r.created_at_ms);
    let last = reports.last().map_or(0, |r| r.created_at_ms);
    // Steady rate between the first and the last create; the wall rate includes the wait
    // for backoffs to expire after the gate opened.
    let rate = if last > first {
        (reports.len() as f64 - 1.0) * 1000.0 / (last - first) as f64
    } else {
        0.0
    };
    let wall_rate = reports.len() as f64 / wall;
    println!(
        "| drain | {} replica(s) | queued {queued} | delivered {} (complete: {done}) | steady {rate:.2}/s | from gate open {wall_rate:.2}/s | first create {} ms after open | 90018 answers {rejections} | create calls {} |",
        relays.len(),
        reports.len(),
        first - opened_ms,
        fake.fake.create_calls(),
    );
    for relay in relays {
        relay.stop();
    }
    json!({"replicas": configs.len(), "queued": queued, "delivered": reports.len(), "complete": done,
        "rate_per_s": rate, "wall_rate_per_s": wall_rate, "wall_secs": wall,
        "first_create_after_open_ms": first - opened_ms, "qps_rejections": rejections,
        "create_calls": fake.fake.create_calls(), "startup_ms": startup_ms})
}

/// Open-loop load at `rate`/s for `duration`, sampling the relay's RSS every 5 s.
async fn soak(http: &reqwest::Client, relay: &Relay, duration: Duration, rate: u64) -> Value {
    let pid = relay.child.id();
    let start = Instant::now();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while start.elapsed() < duration {
            samples.push(json!([start.elapsed().as_secs_f64(), rss_mib(pid)]));
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        samples.push(json!([start.elapsed().as_secs_f64(), rss_mib(pid)]));
        samples
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(256));
    let mut sent = 0u64;
    while start.elapsed() < duration {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (http, url) = (http.clone(), relay.hook_url.clone());
        tokio::spawn(async move {
            post(&http, &url, next_run()).await;
            drop(permit);
        });
        sent += 1;
    }
    let samples = sampler.await.expect("sampler");
    let rss: Vec<f64> = samples
        .iter()
        .filter_map(|s| s[1].as_f64())
        .collect::<Vec<_>>();
    let first = rss.first().copied().unwrap_or(f64::NAN);
    let end = rss.last().copied().unwrap_or(f64::NAN);
    let max = rss.iter().copied().fold(f64::NAN, f64::max);
    json!({"secs": duration.as_secs(), "rate_per_s": rate, "sent": sent, "rss_start_mib": first,
        "rss_end_mib": end, "rss_max_mib": max, "growth_mib": end - first, "samples": samples})
}

async fn fresh_postgres_database(url: &str, created: &mut Vec<String>) -> String {
    use sqlx::Connection;
    let database = format!("relay_bench_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut conn)
        .await
        .expect("create bench database");
    let _ = conn.close().await;
    created.push(database.clone());
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("a URL with ://");
    let authority = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{authority}/{database}{query}")
}

async fn drop_postgres_databases(url: &str, databases: &[String]) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect(url).await else {
        return;
    };
    for db in databases {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
    let _ = conn.close().await;
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_owned(), |s| s.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "machine: {nproc} CPUs, {model}, {:.1} GiB RAM",
        mem_kib as f64 / 1048576.0
    );
    json!({"nproc": nproc, "cpu_model": model, "mem_gib": mem_kib as f64 / 1048576.0,
        "unix_time": unix_ms() / 1000})
}

fn plot(json_path: &Path, png: &Path) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/plot.py");
    match Command::new("python3")
        .arg(&script)
        .arg(json_path)
        .arg(png)
        .status()
    {
        Ok(s) if s.success() => println!("wrote {}", png.display()),
        Ok(_) => println!(
            "plot skipped: `python3 benches/plot.py` failed (is matplotlib installed? `pip install matplotlib`)"
        ),
        Err(_) => {
            println!("plot skipped: python3 not found (`pip install matplotlib` to get the plot)")
        }
    }
}
