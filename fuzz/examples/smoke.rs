//! A stable-Rust stand-in for libFuzzer: runs the same harnesses (`dingtalk_relay_fuzz::*`) on
//! random bytes and on mutations of the seeds (and of `corpus/<target>/`, when a libFuzzer run
//! left one), for a bounded time per target. Each distinct panic (by message location) is
//! minimised and written to `artifacts/smoke/<target>/`.
//!
//! ```text
//! cargo run --release --example smoke -- [SECONDS_PER_TARGET] [TARGET...]
//! cargo run --release --example smoke -- --write-corpus   # seeds corpus/sources/ for libFuzzer
//! ```
//!
//! Exits 1 when any harness panicked.

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    ("sources", dingtalk_relay_fuzz::sources),
    ("generic", dingtalk_relay_fuzz::generic),
    ("mapping", dingtalk_relay_fuzz::mapping),
    ("config", dingtalk_relay_fuzz::config),
];

/// xorshift64*: small, deterministic for a given seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths {
            if let Ok(bytes) = std::fs::read(&path) {
                out.push(bytes);
            }
        }
    }
    out
}

/// The tokens of a libFuzzer dictionary (`name="value"` lines, `\xNN` and `\"` escapes).
fn dictionary(path: &Path) -> Vec<Vec<u8>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (Some(start), Some(end)) = (line.find('"'), line.rfind('"')) else {
            continue;
        };
        if end <= start {
            continue;
        }
        let raw = &line.as_bytes()[start + 1..end];
        let mut token = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            let hex = raw
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (raw[i], raw.get(i + 1), hex) {
                (b'\\', Some(b'x'), Some(b)) => {
                    token.push(b);
                    i += 4;
                }
                (b'\\', Some(&next), _) => {
                    token.push(next);
                    i += 2;
                }
                (b, _, _) => {
                    token.push(b);
                    i += 1;
                }
            }
        }
        out.push(token);
    }
    out
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, pool: &[Vec<u8>], dict: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                input.drain(i..i + n);
            }
            4 if !dict.is_empty() => {
                let token = &dict[rng.below(dict.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, token.iter().copied());
            }
            5 if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let b = a + rng.below(other.len() - a).min(256);
                    let i = rng.below(len + 1);
                    input.splice(i..i, other[a..b].iter().copied());
                }
            }
            6 if len > 1 => {
                // Repeat a chunk: deep nesting, long strings.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                let chunk: Vec<u8> = input[i..i + n].to_vec();
                for _ in 0..rng.below(64) {
                    input.splice(i..i, chunk.iter().copied());
                }
            }
            _ => {
                let i = rng.below(len + 1);
                let digits = rng.next().to_string();
                input.splice(i..i, digits.bytes());
            }
        }
    }
}

/// Where the last panic happened and what it said.
type LastPanic = Arc<Mutex<Option<(String, String)>>>;

fn run(harness: Harness, input: &[u8], last: &LastPanic) -> Option<(String, String)> {
    *last.lock().unwrap() = None;
    let result = panic::catch_unwind(AssertUnwindSafe(|| harness(input)));
    result.err().map(|_| {
        last.lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| ("?".to_owned(), "?".to_owned()))
    })
}

/// Removes chunks (halves down to single bytes) while the same panic location still occurs.
fn minimise(harness: Harness, input: &[u8], location: &str, last: &LastPanic) -> Vec<u8> {
    let mut best = input.to_vec();
    let mut chunk = best.len() / 2;
    while chunk > 0 {
        let mut i = 0;
        while i < best.len() {
            let mut candidate = best.clone();
            candidate.drain(i..(i + chunk).min(best.len()));
            if run(harness, &candidate, last).is_some_and(|(loc, _)| loc == location) {
                best = candidate;
            } else {
                i += chunk;
            }
        }
        chunk /= 2;
    }
    best
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = dingtalk_relay_fuzz::shared_corpus_seeds(&root.join("../tests/fixtures"));
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "--write-corpus") {
        // Seeds a libFuzzer corpus with the captured fixtures' payloads (gitignored).
        let dir = root.join("corpus").join("sources");
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (name, input) in &shared {
            std::fs::write(dir.join(name), input).expect("write seed");
        }
        println!("wrote {} seeds to {}", shared.len(), dir.display());
        return;
    }
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(30);
    let chosen: Vec<String> = args.collect();

    let last: LastPanic = Arc::new(Mutex::new(None));
    let hook_last = Arc::clone(&last);
    panic::set_hook(Box::new(move |info| {
        let mut location = info
            .location()
            .map_or_else(|| "?".to_owned(), |l| format!("{}:{}", l.file(), l.line()));
        if location.starts_with("/rustc/") || location.contains("/.cargo/registry/") {
            // A panic inside std or a dependency: name the first frame of our own code.
            let trace = std::backtrace::Backtrace::force_capture().to_string();
            if let Some(ours) = trace
                .lines()
                .filter_map(|l| l.trim().strip_prefix("at "))
                .find(|p| {
                    !p.starts_with("/rustc/")
                        && !p.contains("/.cargo/registry/")
                        && !p.contains("/library/")
                        && !p.contains("examples/smoke.rs")
                })
            {
                location = format!("{location} (from {ours})");
            }
        }
        let message = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| {
                info.payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
            })
            .unwrap_or_default();
        *hook_last.lock().unwrap() = Some((location, message));
    }));

    let mut failed = false;
    for (name, harness) in TARGETS {
        if !chosen.is_empty() && !chosen.iter().any(|c| c == name) {
            continue;
        }
        let mut pool = files(&root.join("seeds").join(name));
        pool.extend(files(&root.join("corpus").join(name)));
        if *name == "sources" {
            pool.extend(shared.iter().map(|(_, input)| input.clone()));
        }
        let dict = dictionary(&root.join("dict").join(format!("{name}.dict")));
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ name.len() as u64);
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut runs = 0u64;
        let mut crashes: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
        for seed in &pool {
            if let Some((loc, msg)) = run(*harness, seed, &last) {
                crashes.entry(loc).or_insert((msg, seed.clone()));
            }
        }
        while Instant::now() < deadline {
            let mut input = if pool.is_empty() || rng.below(8) == 0 {
                (0..rng.below(512)).map(|_| rng.next() as u8).collect()
            } else {
                pool[rng.below(pool.len())].clone()
            };
            mutate(&mut rng, &mut input, &pool, &dict);
            runs += 1;
            if let Some((loc, msg)) = run(*harness, &input, &last) {
                crashes.entry(loc).or_insert((msg, input));
            }
        }
        println!(
            "{name}: {runs} runs in {seconds} s, {} distinct panic(s)",
            crashes.len()
        );
        for (location, (message, input)) in &crashes {
            failed = true;
            let small = minimise(*harness, input, location, &last);
            let dir = root.join("artifacts").join("smoke").join(name);
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("crash-{:016x}", fxhash(&small)));
            let _ = std::fs::write(&file, &small);
            println!("  panic at {location}: {message}");
            println!(
                "    minimised input ({} bytes): {:?}",
                small.len(),
                String::from_utf8_lossy(&small)
            );
            println!("    saved to {}", file.display());
        }
    }
    if failed {
        std::process::exit(1);
    }
}

fn fxhash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
