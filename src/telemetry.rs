//! Telemetry: the `tracing` subscriber (text or JSON lines on stderr), with `RUST_LOG`
//! taking precedence over `log.filter`. Field values are attacker-controlled (route names,
//! header values, payload fields), so neither format lets one start a line of its own or
//! carry a terminal escape sequence: JSON escapes them by construction, text through
//! [`EscapedFields`]. Text logs are coloured only when stderr is a terminal.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{FormatFields, Writer};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber once; later calls are no-ops (tests start many apps).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = std::io::stderr.with_max_level(tracing::Level::TRACE);
    let ansi = std::io::stderr().is_terminal();
    // Already installed (a second app in one test binary): keep the first.
    drop(subscriber(settings.format, filter, writer, ansi).try_init());
}

/// The subscriber for `format`, writing to `writer`, with colours only when `ansi`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .map_writer(|writer| JsonEscaping { inner: writer })
                .finish(),
        ),
        LogFormat::Text => Box::new(builder.with_ansi(ansi).fmt_fields(EscapedFields).finish()),
    }
}

/// JSON lines with the characters that JSON may carry raw but a terminal or a line-based
/// reader may act on (C1 controls, line separators, bidirectional overrides) written as
/// `\uXXXX` escapes, which decode to the same string. The formatter writes each event in one
/// call, and such characters can only occur inside its strings.
struct JsonEscaping<M> {
    inner: M,
}

impl<'w, M: MakeWriter<'w>> MakeWriter<'w> for JsonEscaping<M> {
    type Writer = JsonEscapingWriter<M::Writer>;

    fn make_writer(&'w self) -> Self::Writer {
        JsonEscapingWriter(self.inner.make_writer())
    }

    fn make_writer_for(&'w self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        JsonEscapingWriter(self.inner.make_writer_for(meta))
    }
}

/// The writer of [`JsonEscaping`].
struct JsonEscapingWriter<W>(W);

impl<W: std::io::Write> std::io::Write for JsonEscapingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(bytes) {
            Ok(text) if text.chars().any(needs_json_escape) => {
                let mut escaped = String::with_capacity(text.len() + 16);
                for c in text.chars() {
                    if needs_json_escape(c) {
                        let _ = write!(escaped, "\\u{:04x}", u32::from(c));
                    } else {
                        escaped.push(c);
                    }
                }
                self.0.write_all(escaped.as_bytes())?;
            }
            _ => self.0.write_all(bytes)?,
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Characters that serde_json leaves raw but that must not reach a log line raw.
fn needs_json_escape(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text-format fields with every value escaped by [`escape`]: `name=value` pairs separated
/// by spaces, the message first and bare, as the default formatter writes them.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{}", escape(value))
        } else {
            let name = field.name().trim_start_matches("r#");
            write!(self.writer, "{separator}{name}={}", escape(value))
        };
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// `text` with every character that could end a log line or drive a terminal written as a
/// visible escape: control characters (C0 with newline, carriage return and ESC, DEL, C1),
/// Unicode line and paragraph separators, and bidirectional overrides.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    const FORGED: &str = "ci\n2026-12-04T00:00:00Z ERROR forged\u{1b}[31m\r\u{2028}x\u{9b}y";

    fn log_forged(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, EnvFilter::new("info"), buffer.clone(), ansi);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("receive_webhook", route = %FORGED);
            let _entered = span.enter();
            let header = FORGED.to_owned();
            tracing::info!(header, status = %FORGED, debug = ?FORGED, "webhook {}", FORGED);
            let error = std::io::Error::other(FORGED);
            tracing::warn!(
                error = &error as &(dyn std::error::Error + 'static),
                "failed"
            );
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn attacker_values_cannot_forge_a_line_or_an_escape_sequence_in_either_format() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let output = log_forged(format, false);
            let lines: Vec<&str> = output.lines().collect();
            assert_eq!(lines.len(), 2, "{format:?}: {output}");
            for c in ['\u{1b}', '\r', '\u{2028}', '\u{9b}'] {
                assert!(!output.contains(c), "{format:?} {c:?}: {output}");
            }
            assert!(
                lines.iter().all(|l| !l.starts_with("2026-12-04T00:00:00Z")),
                "{output}"
            );
            if format == LogFormat::Json {
                for line in lines {
                    let value: serde_json::Value = serde_json::from_str(line).unwrap();
                    assert!(value.is_object(), "{line}");
                }
            } else {
                // Every value is still there, visibly escaped.
                assert!(output.contains("header=ci\\n2026-12-04T00:00:00Z ERROR forged\\u{1b}[31m\\r\\u{2028}x\\u{9b}y"), "{output}");
                assert!(output.contains("route=ci\\n"), "{output}");
                assert!(output.contains("webhook ci\\n"), "{output}");
            }
        }
    }

    #[test]
    fn text_logs_are_coloured_only_when_asked() {
        let plain = log_forged(LogFormat::Text, false);
        assert!(!plain.contains('\u{1b}'), "{plain}");
        let coloured = log_forged(LogFormat::Text, true);
        assert!(coloured.contains('\u{1b}'), "{coloured}");
    }

    #[test]
    fn escape_leaves_ordinary_text_alone() {
        for text in ["plain", "中文 🚀 tabs-free", ""] {
            assert!(
                matches!(escape(text), std::borrow::Cow::Borrowed(_)),
                "{text}"
            );
        }
        assert_eq!(escape("a\nb\u{7f}\u{202e}"), "a\\nb\\u{7f}\\u{202e}");
    }
}
