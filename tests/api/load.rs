//! The bounded load test: the real binary on SQLite takes 30 s of webhooks from 64 concurrent
//! senders (half of them opening a new connection per request) plus slow-loris connections,
//! while DingTalk answers slowly and the queue holds at most 50 deliveries. Every answer is a
//! 202 or a 503 with `Retry-After`; every 202 is delivered exactly once; the process's file
//! descriptors come back to where they were and its memory stays bounded. The figures are
//! printed (`--nocapture`) and recorded in SECURITY.md.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dingtalk_relay::sandbox::{FakeDingTalk, FakeOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::process::{assert_each_reported_once, start_relay};

/// How long the senders keep sending.
const LOAD: Duration = Duration::from_secs(30);
/// Concurrent senders.
const SENDERS: usize = 64;
/// Slow-loris connections opened during the load.
const SLOW_CLIENTS: usize = 32;
/// Most deliveries the queue holds.
const MAX_QUEUED: u64 = 50;
/// File descriptors the relay may keep beyond its warmed-up baseline (store and DingTalk
/// connection pools growing to their configured sizes under load).
const FD_SLACK: usize = 16;
/// The resident memory the relay must stay under, in KiB.
const RSS_LIMIT_KIB: u64 = 128 * 1024;

/// One sample of the relay process.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    fds: usize,
    rss_kib: u64,
    threads: u64,
}

fn sample(pid: u32) -> Sample {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        fds,
        rss_kib: field("VmRSS:"),
        threads: field("Threads:"),
    }
}

/// Established TCP connections (either end) on local port `port`, from `/proc/net/tcp`.
fn connections_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st: "0100007F:1F90 0100007F:D2C4 01" (01 = established)
            columns.len() > 3
                && columns[3] == "01"
                && (columns[1].ends_with(&port) || columns[2].ends_with(&port))
        })
        .count()
}

#[allow(
    clippy::print_stderr,
    reason = "the figures are printed for SECURITY.md"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_test_64_senders_slow_dingtalk_small_queue_bounded_and_nothing_lost() {
    // Arrange: DingTalk takes 50 ms per answer (20 creates/s at most with max_qps 20); the
    // queue holds 50; connections must send their request head within 2 s.
    let dir = tempfile::tempdir().unwrap();
    let options = FakeOptions {
        latency: Duration::from_millis(50),
        ..FakeOptions::default()
    };
    let (fake, base_url) = FakeDingTalk::spawn(options.clone()).await.unwrap();
    let config = TestConfig {
        template: ID_TEMPLATE.to_owned(),
        store_url: format!("sqlite://{}", dir.path().join("relay.db").display()),
        fake: options.clone(),
        max_attempts: 50,
        lease: "10s",
        max_queued: MAX_QUEUED,
        header_read_timeout: "2s",
        ..TestConfig::default()
    };
    let yaml = settings_yaml(&config, &base_url) + "log: {format: json, filter: info}\n";
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut relay = start_relay(&path);
    let pid = relay.child.id();
    let next_run = Arc::new(AtomicUsize::new(0));

    // Warm up: a burst of 16 that is delivered, so the store's and DingTalk's connection
    // pools are open before the baseline is taken.
    let warm_up = reqwest::Client::new();
    let mut accepted: HashSet<usize> = HashSet::new();
    let answers = futures::future::join_all((0..16).map(|_| {
        let n = next_run.fetch_add(1, Ordering::Relaxed);
        let request = warm_up
            .post(format!("{}/v1/hooks/ci", relay.address))
            .bearer_auth(ROUTE_SECRET)
            .json(&job_status_n(n))
            .send();
        async move { (n, request.await.map(|r| r.status().as_u16())) }
    }))
    .await;
    for (n, status) in answers {
        assert_eq!(status.unwrap(), 202);
        accepted.insert(n);
    }
    assert!(
        poll_until(Duration::from_secs(30), || async {
            fake.reports().len() == 16
        })
        .await
    );
    drop(warm_up);
    let port: u16 = relay.address.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        poll_until(Duration::from_secs(10), || async {
            connections_on(port) == 0
        })
        .await
    );
    let baseline = sample(pid);

    // Sampler: the relay's file descriptors, memory and threads every 200 ms.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = Sample::default();
            while sampling.load(Ordering::Relaxed) {
                let s = sample(pid);
                peak.fds = peak.fds.max(s.fds);
                peak.rss_kib = peak.rss_kib.max(s.rss_kib);
                peak.threads = peak.threads.max(s.threads);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    };

    // Act: 64 senders for 30 s; half reuse connections, half open one per request.
    let started = Instant::now();
    let end = tokio::time::Instant::now() + LOAD;
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let http = if s % 2 == 0 {
                reqwest::Client::new()
            } else {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap()
            };
            let url = format!("{}/v1/hooks/ci", relay.address);
            let next_run = next_run.clone();
            tokio::spawn(async move {
                let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
                let mut accepted = Vec::new();
                let mut bad = Vec::new();
                while tokio::time::Instant::now() < end {
                    let n = next_run.fetch_add(1, Ordering::Relaxed);
                    let answer = http
                        .post(&url)
                        .bearer_auth(ROUTE_SECRET)
                        .json(&job_status_n(n))
                        .send()
                        .await;
                    let answer = match answer {
                        Ok(answer) => answer,
                        Err(e) => {
                            bad.push(format!("run {n}: {e}"));
                            continue;
                        }
                    };
                    let status = answer.status().as_u16();
                    *statuses.entry(status).or_default() += 1;
                    let retry_after = answer.headers().contains_key("retry-after");
                    let body: Value = answer.json().await.unwrap_or_default();
                    match status {
                        202 => accepted.push(n),
                        503 if retry_after && body["error"]["code"] == "unavailable" => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        _ => bad.push(format!("run {n}: {status} {body}")),
                    }
                }
                (statuses, accepted, bad)
            })
        })
        .collect();
    // Slow-loris clients arrive during the load and trickle a request head.
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| {
            let host = relay.address.trim_start_matches("http://").to_owned();
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
                stream
                    .write_all(b"POST /v1/hooks/ci HTTP/1.1\r\nHost: relay\r\n")
                    .await
                    .unwrap();
                let mut buffer = [0_u8; 256];
                // The server must hang up (EOF or reset); the test's patience is 20 s.
                tokio::time::timeout(Duration::from_secs(20), async {
                    while let Ok(read) = stream.read(&mut buffer).await {
                        if read == 0 {
                            break;
                        }
                    }
                })
                .await
                .is_ok()
            })
        })
        .collect();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for sender in senders {
        let (s, a, b) = sender.await.unwrap();
        for (status, count) in s {
            *statuses.entry(status).or_default() += count;
        }
        accepted.extend(a);
        problems.extend(b);
    }
    let load_secs = started.elapsed().as_secs_f64();
    let mut slow_closed = 0;
    for client in slow {
        slow_closed += usize::from(client.await.unwrap());
    }

    // Everything accepted is delivered.
    let all_delivered = poll_until(Duration::from_secs(60), || async {
        fake.reports().len() >= accepted.len()
    })
    .await;
    // Connections closed: those of the senders are gone, idle ones time out after 2 s.
    let disconnected = poll_until(Duration::from_secs(30), || async {
        connections_on(port) == 0
    })
    .await;
    let settled = poll_until(Duration::from_secs(30), || async {
        sample(pid).fds <= baseline.fds + FD_SLACK
    })
    .await;
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    let after = sample(pid);
    relay.child.kill().ok();
    let _ = relay.child.wait();

    let total: usize = statuses.values().sum();
    eprintln!(
        "load test: {total} requests in {load_secs:.1} s ({:.0}/s) from {SENDERS} senders; answers {statuses:?}; \
         {} accepted and delivered; {slow_closed}/{SLOW_CLIENTS} slow-loris connections closed; \
         fds baseline {} peak {} after {}; RSS baseline {} KiB peak {} KiB after {} KiB; \
         threads baseline {} peak {} after {}",
        total as f64 / load_secs,
        accepted.len(),
        baseline.fds,
        peak.fds,
        after.fds,
        baseline.rss_kib,
        peak.rss_kib,
        after.rss_kib,
        baseline.threads,
        peak.threads,
        after.threads,
    );

    // Assert: only 202 and 503 + Retry-After; no transport errors.
    assert!(problems.is_empty(), "unexpected answers: {problems:?}");
    assert!(
        statuses.keys().all(|s| [202, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "the queue limit was never reached: {statuses:?}"
    );
    // Every 202 is delivered exactly once, and nothing that was refused is.
    assert!(all_delivered, "not every accepted webhook was delivered");
    assert_each_reported_once(&fake, accepted.iter());
    assert_eq!(
        fake.reports().len(),
        accepted.len(),
        "a refused webhook was sent"
    );
    // Slow-loris connections were closed; descriptors and threads came back; memory bounded.
    assert_eq!(
        slow_closed, SLOW_CLIENTS,
        "slow-loris connections left open"
    );
    assert!(
        disconnected,
        "connections to the webhook listener left open"
    );
    assert!(
        settled,
        "file descriptors did not come back: baseline {} now {}",
        baseline.fds, after.fds
    );
    assert!(
        after.threads <= baseline.threads + 8,
        "threads grew: {baseline:?} → {after:?}"
    );
    assert!(
        peak.rss_kib < RSS_LIMIT_KIB,
        "resident memory {} KiB is over {RSS_LIMIT_KIB} KiB",
        peak.rss_kib
    );
}
