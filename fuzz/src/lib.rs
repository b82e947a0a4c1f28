//! Fuzz harnesses for dingtalk-relay's untrusted-input surfaces. Each public function takes
//! the fuzzer's bytes, drives one surface and panics when a promise is broken; the libFuzzer
//! targets in `fuzz_targets/` call them, and `examples/smoke.rs` calls them on stable Rust with
//! random and mutated inputs.
//!
//! Input formats (seeds in `seeds/<target>/`, dictionaries in `dict/`):
//!
//! - [`sources`]: byte 0 picks the source (`IMPLEMENTED[b % len]`), byte 1 holds flags (bit 0:
//!   add a correct credential for that source's signing scheme, which must then verify). The
//!   rest is `name: value` header lines, a blank line (`\n\n`), then the body. Without a blank
//!   line it is all body.
//! - [`generic`]: the body of a `source: generic` webhook.
//! - [`mapping`]: byte 0 picks the event type, status and phase; the rest is split on `0xFF`
//!   into the event's text fields in order (lossy UTF-8).
//! - [`config`]: a YAML settings document (lossy UTF-8).

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, TimeZone, Utc};
use dingtalk_relay::config::{Mode, Secret, Settings, SourceKind};
use dingtalk_relay::mapping::{MAX_CONTENT_CHARS, Mapped, Mapper, TRUNCATION_MARKER, truncate};
use dingtalk_relay::sources::{
    self, Event, IMPLEMENTED, JobStatus, Parsed, Phase, Request, Standup, Status, generic,
};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

/// The route secret every harness uses.
pub const SECRET: &str = "s3cret";

/// When every request "arrives".
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap()
}

// === sources ===

/// Every source's `parse`, `verify` and `delivery_id` on one request.
pub fn sources(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = IMPLEMENTED[usize::from(selector) % IMPLEMENTED.len()];
    let (flags, rest) = rest.split_first().map_or((0, rest), |(f, r)| (*f, r));
    let (head, body) = match find(rest, b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&[][..], rest),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].to_ascii_lowercase();
        let value = trim_start(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let signed = flags & 1 == 1 && sign(kind, body, &mut headers);
    let request = Request {
        headers: &headers,
        body,
        target: "/v1/hooks/ci",
        method: "post",
        now: now(),
    };
    let secret = Secret::new(SECRET);

    match sources::parse(kind, &request) {
        Ok(Parsed::Event(_)) => {}
        Ok(Parsed::Ignored(reason)) => assert!(!reason.is_empty(), "{kind:?}: empty reason"),
        Err(e) => {
            assert!(!e.message.is_empty(), "{kind:?}: empty 400 message");
            if let Some(field) = &e.field {
                assert!(
                    e.message.starts_with(field.as_str()),
                    "{kind:?}: {:?} does not start with {field:?}",
                    e.message
                );
            }
        }
    }
    match sources::verify(kind, &secret, &request) {
        Ok(()) => {}
        Err(message) => {
            assert!(!message.is_empty(), "{kind:?}: empty 401 message");
            assert!(!message.contains(SECRET), "{kind:?}: 401 shows the secret");
            assert!(
                !signed,
                "{kind:?}: a correctly signed delivery was rejected: {message}"
            );
        }
    }
    if let Some(id) = sources::delivery_id(kind, &request) {
        assert!(!id.is_empty() && id.trim() == id, "{kind:?}: id {id:?}");
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != b' ').unwrap_or(bytes.len());
    &bytes[start..]
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Sets one header (replacing any it had); false when the value cannot be a header.
fn put(headers: &mut HeaderMap, name: &'static str, value: String) -> bool {
    headers.remove(name);
    match HeaderValue::from_str(&value) {
        Ok(value) => {
            headers.insert(HeaderName::from_static(name), value);
            true
        }
        Err(_) => false,
    }
}

/// Replaces the source's credential headers with a correct one for `body`, as its sender
/// would. Returns whether it could (the delivery must then verify).
fn sign(kind: SourceKind, body: &[u8], headers: &mut HeaderMap) -> bool {
    let hex = hex::encode(hmac(SECRET.as_bytes(), body));
    match kind {
        SourceKind::Generic => put(headers, "x-signature-256", format!("sha256={hex}")),
        SourceKind::Github => put(headers, "x-hub-signature-256", format!("sha256={hex}")),
        SourceKind::Gitea | SourceKind::Forgejo => {
            for name in [
                "x-forgejo-signature",
                "x-gogs-signature",
                "x-hub-signature-256",
            ] {
                headers.remove(name);
            }
            put(headers, "x-gitea-signature", hex)
        }
        SourceKind::Bitbucket => put(headers, "x-hub-signature", format!("sha256={hex}")),
        SourceKind::Circleci => put(headers, "circleci-signature", format!("v1={hex}")),
        SourceKind::Buildkite => {
            headers.remove("x-buildkite-token");
            let ts = now().timestamp();
            let mut message = format!("{ts}.").into_bytes();
            message.extend_from_slice(body);
            let sig = hex::encode(hmac(SECRET.as_bytes(), &message));
            put(
                headers,
                "x-buildkite-signature",
                format!("timestamp={ts},signature={sig}"),
            )
        }
        SourceKind::Gitlab => {
            let ts = now().timestamp().to_string();
            let mut message = format!("msg_1.{ts}.").into_bytes();
            message.extend_from_slice(body);
            let sig = BASE64.encode(hmac(SECRET.as_bytes(), &message));
            put(headers, "webhook-id", "msg_1".to_owned())
                && put(headers, "webhook-timestamp", ts)
                && put(headers, "webhook-signature", format!("v1,{sig}"))
        }
        SourceKind::Drone => {
            headers.remove("authorization");
            let date = now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            let digest = format!("SHA-256={}", BASE64.encode(Sha256::digest(body)));
            let lines = format!("date: {date}\ndigest: {digest}");
            let sig = BASE64.encode(hmac(SECRET.as_bytes(), lines.as_bytes()));
            let signature = format!(
                "keyId=\"k\",algorithm=\"hmac-sha256\",signature=\"{sig}\",headers=\"date digest\""
            );
            put(headers, "date", date)
                && put(headers, "digest", digest)
                && put(headers, "signature", signature)
        }
        SourceKind::Jenkins | SourceKind::AzureDevops => {
            headers.remove("x-relay-token");
            put(headers, "authorization", format!("Bearer {SECRET}"))
        }
    }
}

// === the generic payload ===

/// `generic::parse`; an accepted event, written back as JSON, parses to the same event.
pub fn generic(data: &[u8]) {
    let event = match generic::parse(data) {
        Ok(event) => event,
        Err(e) => {
            assert!(!e.message.is_empty());
            if let Some(field) = &e.field {
                assert!(e.message.starts_with(field.as_str()), "{e:?}");
            }
            return;
        }
    };
    let json = serde_json::to_vec(&event).expect("an event serialises");
    let again = generic::parse(&json).unwrap_or_else(|e| {
        panic!(
            "the relay's own rendering of an accepted event is rejected: {e}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    match (&event, &again) {
        (Event::JobStatus(a), Event::JobStatus(b)) => {
            // `refs/heads/` is stripped once per parse: `refs/heads/refs/heads/x` → `x`.
            let mut b = b.clone();
            if a.branch
                .as_deref()
                .is_some_and(|x| x.starts_with("refs/heads/"))
            {
                b.branch.clone_from(&a.branch);
            }
            assert_eq!(a, &b, "round trip changed the job_status");
        }
        _ => assert_eq!(event, again, "round trip changed the event"),
    }
}

// === mapping ===

const MAPPING_YAML: &str = r#"
server: {listen: "127.0.0.1:8080", admin_listen: "127.0.0.1:8081"}
dingtalk:
  apps:
    default: {app_key: "k"}
store: {url: "memory:"}
delivery: {}
users:
  octocat: "dd_user_01"
  "Alice@Example.com": "dd_alice"
routes:
  builtin:
    source: generic
    template: {name: "日报"}
    author: "manager01"
    to_userids: ["lead01", "actor", "octocat"]
    events: [queued, in_progress, completed]
  actor:
    source: generic
    template: {name: "日报", owner: "manager01"}
    author: actor
    events: [queued, in_progress, completed]
  custom:
    source: generic
    template: {name: "日报"}
    author: "manager01"
    events: [queued, in_progress, completed]
"#;

/// The routes every event is mapped through: built-in templates, `author: actor`, and a route
/// whose fields show every template variable.
pub fn mapper() -> &'static Mapper {
    static MAPPER: OnceLock<Mapper> = OnceLock::new();
    MAPPER.get_or_init(|| {
        let mut yaml = MAPPING_YAML.to_owned();
        yaml.push_str("    fields:\n");
        let mut all = String::new();
        for (name, _) in dingtalk_relay::mapping::variables() {
            yaml.push_str(&format!("      \"var_{name}\": \"{{{{ {name} }}}}\"\n"));
            all.push_str(&format!("{name}={{{{ {name} }}}}\\n"));
        }
        yaml.push_str(&format!("      \"all\": \"{all}\"\n"));
        yaml.push_str("      \"lists\": \"{{ done | bullets }}\\n{{ todo | numbered }}\\n{{ blockers | bullets }}\\n{{ notes | bullets }}\"\n");
        let settings = Settings::from_yaml(&yaml).expect("mapping settings");
        Mapper::new(&settings).expect("mapping routes compile")
    })
}

/// An event from the fuzzer's bytes, mapped through every route: no panic, no render error,
/// every content within the limit; and `truncate` on each raw field.
pub fn mapping(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let texts: Vec<String> = rest
        .split(|b| *b == 0xFF)
        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
        .collect();
    let mut fields = texts.iter().cloned();
    let mut next = || fields.next().filter(|s| s != "\u{0}");
    let time = |s: &Option<String>| -> Option<DateTime<Utc>> {
        let s = s.as_deref()?;
        let n = s.bytes().fold(0i64, |acc, b| {
            acc.wrapping_mul(131).wrapping_add(i64::from(b))
        });
        DateTime::from_timestamp(
            n.rem_euclid(
                DateTime::<Utc>::MAX_UTC.timestamp() - DateTime::<Utc>::MIN_UTC.timestamp(),
            ) + DateTime::<Utc>::MIN_UTC.timestamp(),
            0,
        )
    };
    let event = if selector & 1 == 0 {
        let status = match (selector >> 1) % 9 {
            0 => None,
            1 => Some(Status::Success),
            2 => Some(Status::Failure),
            3 => Some(Status::Cancelled),
            4 => Some(Status::Running),
            5 => Some(Status::Pending),
            6 => Some(Status::Skipped),
            7 => Some(Status::Unknown),
            _ => Some(Status::Other(next().unwrap_or_default())),
        };
        let phase = match (selector >> 5) % 4 {
            0 => None,
            1 => Some(Phase::Queued),
            2 => Some(Phase::InProgress),
            _ => Some(Phase::Completed),
        };
        let started = next();
        let finished = next();
        let duration = next().map(|s| {
            s.bytes().fold(0u64, |acc, b| {
                acc.wrapping_mul(257).wrapping_add(u64::from(b))
            })
        });
        Event::JobStatus(JobStatus {
            job: next(),
            pipeline: next(),
            status,
            status_raw: next(),
            source: next(),
            phase,
            project: next(),
            run_id: next(),
            branch: next(),
            commit: next(),
            commit_message: next(),
            url: next(),
            actor: next(),
            actor_email: next(),
            started_at: time(&started),
            finished_at: time(&finished),
            duration_secs: duration,
            summary: next(),
        })
    } else {
        let user = next();
        let userid = next();
        let date = next();
        let notes = next();
        let list = |s: Option<String>| -> Vec<String> {
            s.map(|s| s.split('\u{1}').map(str::to_owned).collect())
                .unwrap_or_default()
        };
        Event::Standup(Standup {
            user,
            userid,
            date,
            done: list(next()),
            todo: list(next()),
            blockers: list(next()),
            notes,
        })
    };
    let at = time(&texts.first().cloned()).unwrap_or_else(now);
    for route in ["builtin", "actor", "custom"] {
        match mapper().map(route, &event, at) {
            Ok(Mapped::Report { draft, truncated }) => {
                for content in &draft.contents {
                    let chars = content.content.chars().count();
                    assert!(
                        chars <= MAX_CONTENT_CHARS,
                        "{route}.{}: {chars}",
                        content.field
                    );
                    assert!(
                        !content.content.is_empty(),
                        "{route}.{}: empty",
                        content.field
                    );
                }
                for field in &truncated {
                    assert!(draft.contents.iter().any(|c| &c.field == field));
                }
            }
            Ok(Mapped::Ignored { reason, .. }) => assert!(!reason.is_empty()),
            Err(e) => panic!("{route}: {e}"),
        }
    }
    for text in &texts {
        let (out, cut) = truncate(text);
        assert!(out.chars().count() <= MAX_CONTENT_CHARS);
        if cut {
            let kept = out.strip_suffix(TRUNCATION_MARKER).expect("marker");
            assert!(text.starts_with(kept));
        } else {
            assert_eq!(&out, text);
        }
    }
}

// === configuration ===

/// `Settings::from_yaml`, then `issues` in every mode and `Mapper::new` on what loads.
pub fn config(data: &[u8]) {
    let yaml = String::from_utf8_lossy(data);
    let Ok(settings) = Settings::from_yaml(&yaml) else {
        return;
    };
    for mode in [Mode::Production, Mode::Sandbox, Mode::Offline] {
        for issue in settings.issues(mode) {
            assert!(!issue.path.is_empty(), "{issue:?}");
        }
    }
    let _ = settings.tz();
    let _ = Mapper::new(&settings);
}

// === seeds from the shared corpus ===

/// [`sources`] inputs built from the captured payloads in the repository's `tests/fixtures/`
/// (third-party files with their licences, so they are not copied into `seeds/`): (file name,
/// input).
pub fn shared_corpus_seeds(corpus: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let index = |kind: SourceKind| {
        u8::try_from(
            IMPLEMENTED
                .iter()
                .position(|k| *k == kind)
                .expect("implemented"),
        )
        .expect("few sources")
    };
    let mut out = Vec::new();
    let mut add = |name: String, kind: SourceKind, headers: &[(&str, &str)], body: &[u8]| {
        let mut input = vec![index(kind), 1];
        for (k, v) in headers {
            input.extend_from_slice(format!("{k}: {v}\n").as_bytes());
        }
        input.extend_from_slice(if headers.is_empty() { b"\n\n" } else { b"\n" });
        input.extend_from_slice(body);
        out.push((name, input));
    };
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(corpus)
        .into_iter()
        .flatten()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    entries.sort();
    for dir in entries {
        let source = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for path in files {
            let Ok(body) = std::fs::read(&path) else {
                continue;
            };
            let file = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            let name = format!("{source}-{file}");
            let event = file.split('.').next().unwrap_or("").to_owned();
            match source.as_str() {
                "github" => {
                    add(
                        name.clone(),
                        SourceKind::Github,
                        &[("x-github-event", &event)],
                        &body,
                    );
                    add(
                        format!("gitea-{file}"),
                        SourceKind::Gitea,
                        &[("x-gitea-event", &event)],
                        &body,
                    );
                }
                "gitlab" => {
                    let hook = if file.starts_with("pipeline") {
                        "Pipeline Hook"
                    } else {
                        "Job Hook"
                    };
                    add(name, SourceKind::Gitlab, &[("x-gitlab-event", hook)], &body);
                }
                "drone" => add(
                    name,
                    SourceKind::Drone,
                    &[("x-drone-event", "build")],
                    &body,
                ),
                "bitbucket" => {
                    let key = if file.contains("created") {
                        "repo:commit_status_created"
                    } else {
                        "repo:commit_status_updated"
                    };
                    add(name, SourceKind::Bitbucket, &[("x-event-key", key)], &body);
                }
                "azuredevops" => add(name, SourceKind::AzureDevops, &[], &body),
                _ => {}
            }
        }
    }
    out
}
