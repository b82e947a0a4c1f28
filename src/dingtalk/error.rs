//! The DingTalk error type and the one place that decides what is retried (spec §7).

use std::time::Duration;

/// Token errors: drop the cached token, fetch once more, retry the call once.
pub const TOKEN_ERRCODES: [i64; 4] = [40014, 42001, 40001, 33001];
/// Rate-limit and busy codes that are retried with backoff.
pub const RETRY_ERRCODES: [i64; 5] = [-1, 90018, 90002, 90005, 90006];
/// Every errcode of the reference table (dingtalk-api.md §5.2): the values the `errcode`
/// metric label may take; any other code is counted as `other`, so a misbehaving server
/// cannot grow the number of series.
pub const KNOWN_ERRCODES: [i64; 45] = [
    -1, 22, 88, 33001, 33012, 40000, 40001, 40003, 40014, 40035, 40038, 40089, 40096, 41001, 41002,
    41004, 42001, 43001, 43002, 43004, 43005, 43009, 50002, 60011, 60020, 60121, 90001, 90002,
    90003, 90004, 90005, 90006, 90007, 90008, 90009, 90010, 90011, 90012, 90013, 90014, 90017,
    90018, 90019, 90020, 400002,
];

/// The `errcode` metric label for an effective code: the code itself when it is one of
/// [`KNOWN_ERRCODES`], else `other`.
pub fn errcode_label(code: i64) -> String {
    if KNOWN_ERRCODES.contains(&code) {
        code.to_string()
    } else {
        "other".to_owned()
    }
}

/// What went wrong talking to DingTalk.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request never left: connection refused, DNS, TLS, connect timeout.
    #[error("{api}: could not connect: {message}")]
    Connect {
        /// API name.
        api: &'static str,
        /// Transport message (no URL, so no token).
        message: String,
    },
    /// The request may have reached DingTalk, but no answer was read (timeout, reset).
    #[error("{api}: no answer after the request was sent: {message}")]
    NoAnswer {
        /// API name.
        api: &'static str,
        /// Transport message (no URL, so no token).
        message: String,
    },
    /// An HTTP status other than 200 (a gateway's page, or a 5xx that may follow a commit).
    #[error("{api}: HTTP {status}")]
    Http {
        /// API name.
        api: &'static str,
        /// The status code.
        status: u16,
    },
    /// The body was not a DingTalk envelope (an HTML page, JSON without errcode, an answer
    /// too large to read): for report/create it cannot prove that nothing was created.
    #[error("{api}: answer is not DingTalk JSON ({detail})")]
    InvalidBody {
        /// API name.
        api: &'static str,
        /// A short description, e.g. the start of the body.
        detail: String,
        /// True for an HTML page at HTTP 200, the way DingTalk answers an IP it bans (wait
        /// about 5 minutes).
        ip_banned: bool,
    },
    /// The documented IP-ban notice `{"status":1111,…,"punish":"deny"}`: a definite
    /// refusal, nothing was done.
    #[error("{api}: IP banned (punish: deny)")]
    IpBanned {
        /// API name.
        api: &'static str,
    },
    /// An error answer of the current API host (api.dingtalk.com): an HTTP status with
    /// `{"code","message","requestid"}`, e.g. 400 `invalidClientIdOrSecret`.
    #[error("{api}: HTTP {status} {code}: {message}{}", request_id_suffix(.request_id.as_deref()))]
    Refused {
        /// API name.
        api: &'static str,
        /// The HTTP status.
        status: u16,
        /// `code`, e.g. `invalidClientIdOrSecret`.
        code: String,
        /// `message`.
        message: String,
        /// `requestid`.
        request_id: Option<String>,
    },
    /// A JSON answer with a non-zero errcode.
    #[error("{api}: errcode {code}: {message}{}", request_id_suffix(.request_id.as_deref()))]
    Api {
        /// API name.
        api: &'static str,
        /// The effective code: `sub_code` under errcode 88, else `errcode`.
        code: i64,
        /// The errcode as sent (88 when wrapped).
        errcode: i64,
        /// errmsg / sub_msg.
        message: String,
        /// DingTalk's `request_id` of the answer, which DingTalk support asks for.
        request_id: Option<String>,
    },
    /// The relay is not calling DingTalk for this app for a while (monthly quota used up,
    /// credentials refused, IP banned): nothing was sent.
    #[error("not sent: {reason} (for {}s more)", .wait.as_secs())]
    Paused {
        /// Why, as the pause was recorded.
        reason: String,
        /// How long the pause still lasts.
        wait: Duration,
    },
    /// The relay's configuration does not fit (app unknown, secret missing, template field
    /// missing or not text).
    #[error("{0}")]
    Config(String),
}

/// How long deliveries wait, without spending attempts, while an app's credentials are
/// refused by gettoken (an operator fixes the secret and reloads).
pub const CREDENTIALS_WAIT: Duration = Duration::from_secs(60);
/// How long deliveries wait while the organisation's monthly quota is exhausted (90020)
/// before one of them probes again.
pub const QUOTA_WAIT: Duration = Duration::from_secs(3600);

/// What to do after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Not this delivery's fault (the app's credentials, the monthly quota): wait this long
    /// without spending an attempt.
    Defer(Duration),
    /// Rejected for sure, and worth another try later.
    Retry,
    /// The token was refused: refresh it and retry once.
    RefreshToken,
    /// The report may have been created; do not resend blindly.
    Ambiguous,
    /// Rejected for good; needs a human.
    Permanent,
}

/// ` (request_id …)` when there is one.
fn request_id_suffix(request_id: Option<&str>) -> String {
    request_id.map_or_else(String::new, |id| format!(" (request_id {id})"))
}

impl Error {
    /// The effective DingTalk errcode, when DingTalk answered with one.
    pub fn code(&self) -> Option<i64> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// DingTalk's `request_id` of the answer, when it gave one.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Api { request_id, .. } | Self::Refused { request_id, .. } => {
                request_id.as_deref()
            }
            _ => None,
        }
    }

    /// The API whose call failed; `None` when no call was made (pause, configuration).
    pub fn api(&self) -> Option<&'static str> {
        match self {
            Self::Connect { api, .. }
            | Self::NoAnswer { api, .. }
            | Self::Http { api, .. }
            | Self::InvalidBody { api, .. }
            | Self::IpBanned { api }
            | Self::Refused { api, .. }
            | Self::Api { api, .. } => Some(api),
            Self::Paused { .. } | Self::Config(_) => None,
        }
    }

    /// The decision of spec §7, made in one place. `idempotent` calls (gettoken, getbyname,
    /// list) can be retried after any failure; for report/create only a definite DingTalk
    /// errcode, a refusal before the backend (IP ban notice, 429) or a request that never
    /// left proves that nothing was created: every other answer is ambiguous.
    ///
    /// Only report/create is not idempotent: an error of any other API is treated as
    /// `idempotent` whatever the caller says.
    pub fn disposition(&self, idempotent: bool) -> Disposition {
        let idempotent = idempotent
            || self
                .api()
                .is_some_and(|api| api != super::api::REPORT_CREATE);
        match self {
            Self::Paused { wait, .. } => Disposition::Defer(*wait),
            Self::Connect { .. } | Self::IpBanned { .. } => Disposition::Retry,
            Self::InvalidBody { .. } | Self::NoAnswer { .. } if idempotent => Disposition::Retry,
            Self::InvalidBody { .. } | Self::NoAnswer { .. } => Disposition::Ambiguous,
            Self::Http { status: 429, .. } => Disposition::Retry,
            Self::Http { status, .. } if *status >= 500 && idempotent => Disposition::Retry,
            Self::Http { status, .. } if *status >= 500 => Disposition::Ambiguous,
            Self::Http { .. } => Disposition::Permanent,
            Self::Refused { status, .. } if *status == 429 || *status >= 500 => Disposition::Retry,
            // The token endpoint refused the app's key or secret.
            Self::Refused {
                api: super::api::GETTOKEN,
                ..
            } => Disposition::Defer(CREDENTIALS_WAIT),
            Self::Refused { .. } => Disposition::Permanent,
            Self::Api {
                api: super::api::GETTOKEN,
                code,
                ..
            } if !RETRY_ERRCODES.contains(code) => Disposition::Defer(CREDENTIALS_WAIT),
            Self::Api { code: 90020, .. } => Disposition::Defer(QUOTA_WAIT),
            Self::Api { code, .. } if TOKEN_ERRCODES.contains(code) => Disposition::RefreshToken,
            Self::Api { code, .. } if RETRY_ERRCODES.contains(code) => Disposition::Retry,
            Self::Api { .. } | Self::Config(_) => Disposition::Permanent,
        }
    }

    /// Whether a delivery that hit this error should be tried again later.
    pub fn is_retriable(&self) -> bool {
        matches!(self.disposition(false), Disposition::Retry)
    }

    /// The least time to wait before retrying, when DingTalk says how long.
    pub fn min_backoff(&self) -> Option<Duration> {
        match self {
            Self::InvalidBody {
                ip_banned: true, ..
            }
            | Self::IpBanned { .. } => Some(Duration::from_secs(300)),
            Self::Api { code: 90018, .. } => Some(Duration::from_secs(1)),
            Self::Api { code: 90006, .. } => Some(Duration::from_secs(60)),
            _ => None,
        }
    }

    /// A short errmsg for the delivery record, with what to do for errors an operator must
    /// fix.
    pub fn message(&self) -> String {
        match self {
            Self::Api {
                api,
                code,
                message,
                request_id,
                ..
            } => {
                let id = request_id_suffix(request_id.as_deref());
                match hint(api, *code) {
                    Some(hint) => format!("{message} — {hint}{id}"),
                    None => format!("{message}{id}"),
                }
            }
            other => other.to_string(),
        }
    }
}

/// What an operator should do about an errcode, where the fix is known.
fn hint(api: &str, code: i64) -> Option<&'static str> {
    Some(match (api, code) {
        (super::api::TEMPLATE_GETBYNAME | super::api::REPORT_LIST, 60011) => {
            "the app lacks a permission: grant it qyapi_report_statistics and qyapi_report_query (日志统计/查询) in the DingTalk developer console"
        }
        (_, 60011) => {
            "the app lacks the permission qyapi_report_manage (员工日志数据管理权限): grant it in the DingTalk developer console"
        }
        (_, 60020) => "the relay's egress IP is not in the app's server IP whitelist",
        (_, 90020) => {
            "the organisation's monthly API quota is used up: sending pauses and resumes when DingTalk accepts calls again (next month or after an upgrade)"
        }
        (_, 40096 | 40089) => {
            "DingTalk refused the app key or secret: fix dingtalk.apps.*.app_key/app_secret and reload; deliveries wait meanwhile"
        }
        (_, 33012 | 40003 | 60121 | 50002) => {
            "the userid is not a member the app can see: check routes.*.author, users and to_userids"
        }
        _ => return None,
    })
}

/// Reads an error answer of the current API host (`{"code","message","requestid"}`), if the
/// body is one.
pub fn refused(api: &'static str, status: u16, body: &[u8]) -> Option<Error> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(200).collect::<String>())
    };
    Some(Error::Refused {
        api,
        status,
        code: text("code")?,
        message: text("message").unwrap_or_default(),
        request_id: text("requestid")
            .or_else(|| text("request_id"))
            .filter(|id| id.len() <= 128),
    })
}

/// Parses an errcode that DingTalk may send as a number or a string.
pub fn lenient_code(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a DingTalk JSON body: `Ok(body)` when errcode is 0 (or absent with a result),
/// otherwise the classified [`Error::Api`]. The code is taken from `sub_code`, then from a
/// `subcode=NNN` inside errmsg, then from `errcode`.
pub fn check_body(api: &'static str, body: &serde_json::Value) -> Result<(), Error> {
    let Some(object) = body.as_object() else {
        return Err(Error::InvalidBody {
            api,
            detail: "JSON but not an object".to_owned(),
            ip_banned: false,
        });
    };
    if object.get("punish").and_then(|p| p.as_str()) == Some("deny") {
        return Err(Error::IpBanned { api });
    }
    let Some(errcode) = object.get("errcode").and_then(lenient_code) else {
        return Err(Error::InvalidBody {
            api,
            detail: "no errcode in the answer".to_owned(),
            ip_banned: false,
        });
    };
    if errcode == 0 {
        return Ok(());
    }
    let errmsg = object
        .get("errmsg")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    let sub_msg = object.get("sub_msg").and_then(|m| m.as_str());
    let sub_code = object
        .get("sub_code")
        .and_then(lenient_code)
        .or_else(|| subcode_in_errmsg(errmsg));
    let code = match (errcode, sub_code) {
        (88, Some(sub)) => sub,
        _ => errcode,
    };
    let message = match sub_msg {
        Some(sub) if !sub.is_empty() => format!("{errmsg} ({sub})"),
        _ => errmsg.to_owned(),
    };
    let request_id = object
        .get("request_id")
        .or_else(|| object.get("requestid"))
        .and_then(|id| match id {
            serde_json::Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        // An id is short; anything else is not one (and must not bloat the error).
        .filter(|id| id.len() <= 128);
    Err(Error::Api {
        api,
        code,
        errcode,
        message,
        request_id,
    })
}

/// Finds `subcode=NNN` in an errmsg like `ding talk error[subcode=90018,submsg=…]`.
fn subcode_in_errmsg(errmsg: &str) -> Option<i64> {
    let start = errmsg.find("subcode=")? + "subcode=".len();
    let digits: String = errmsg[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn classify(body: serde_json::Value) -> (Option<i64>, Disposition) {
        match check_body("report_create", &body) {
            Ok(()) => (Some(0), Disposition::Permanent),
            Err(e) => (e.code(), e.disposition(false)),
        }
    }

    #[test]
    fn every_code_of_the_reference_table_is_classified() {
        use Disposition::*;
        // (errcode, disposition) for every code in dingtalk-api.md §5.2, bare.
        let table: &[(i64, Disposition)] = &[
            (-1, Retry),
            (40014, RefreshToken),
            (42001, RefreshToken),
            (40001, RefreshToken),
            (33001, RefreshToken),
            (41001, Permanent),
            (40096, Permanent),
            (40089, Permanent),
            (40035, Permanent),
            (40038, Permanent),
            (43004, Permanent),
            (43005, Permanent),
            (43009, Permanent),
            (22, Permanent),
            (400002, Permanent),
            (60011, Permanent),
            (60020, Permanent),
            (33012, Permanent),
            (40003, Permanent),
            (60121, Permanent),
            (50002, Permanent),
            (90018, Retry),
            (90006, Retry),
            (90005, Retry),
            (90002, Retry),
            (90001, Permanent),
            (90003, Permanent),
            (90004, Permanent),
            (90017, Permanent),
            (90019, Permanent),
            (90020, Defer(QUOTA_WAIT)),
            (123456, Permanent),
        ];
        for (code, expected) in table {
            let bare = classify(json!({"errcode": code, "errmsg": "x"}));
            assert_eq!(bare, (Some(*code), *expected), "bare {code}");
            let wrapped = classify(json!({
                "errcode": 88, "sub_code": code.to_string(), "sub_msg": "y",
                "errmsg": format!("ding talk error[subcode={code},submsg=y]")
            }));
            assert_eq!(wrapped, (Some(*code), *expected), "wrapped {code}");
            let in_errmsg_only = classify(json!({
                "errcode": 88, "errmsg": format!("ding talk error[subcode={code},submsg=y]")
            }));
            assert_eq!(in_errmsg_only, (Some(*code), *expected), "errmsg {code}");
            let as_string = classify(json!({"errcode": code.to_string(), "errmsg": "x"}));
            assert_eq!(as_string, (Some(*code), *expected), "string {code}");
        }
    }

    #[test]
    fn gettoken_refusals_defer_and_hints_name_the_fix() {
        let refused = check_body(
            "gettoken",
            &json!({"errcode": 40096, "errmsg": "不合法的appKey或appSecret"}),
        )
        .unwrap_err();
        assert_eq!(
            refused.disposition(true),
            Disposition::Defer(CREDENTIALS_WAIT)
        );
        assert!(
            refused.message().contains("app_secret"),
            "{}",
            refused.message()
        );
        let busy = check_body("gettoken", &json!({"errcode": -1, "errmsg": "busy"})).unwrap_err();
        assert_eq!(busy.disposition(true), Disposition::Retry);
        let permission = check_body(
            "report_create",
            &json!({"errcode": 88, "sub_code": "60011", "sub_msg": "应用尚未开通所需的权限：[qyapi_report_manage]"}),
        )
        .unwrap_err();
        assert!(permission.message().contains("qyapi_report_manage"));
        assert_eq!(permission.disposition(false), Disposition::Permanent);
    }

    #[test]
    fn success_and_odd_bodies() {
        assert!(check_body("x", &json!({"errcode": 0, "result": "r"})).is_ok());
        assert!(check_body("x", &json!({"errcode": "0"})).is_ok());
        let ban = check_body(
            "x",
            &json!({"status": 1111, "wait": 5, "source": "x5", "punish": "deny"}),
        )
        .unwrap_err();
        assert_eq!(ban.disposition(false), Disposition::Retry);
        assert_eq!(ban.min_backoff(), Some(Duration::from_secs(300)));
        // Not an envelope: a create may have happened; other calls are simply retried.
        let no_code = check_body("report_create", &json!({"result": "r"})).unwrap_err();
        assert_eq!(no_code.disposition(false), Disposition::Ambiguous);
        assert_eq!(no_code.disposition(true), Disposition::Retry);
        let array = check_body("report_create", &json!([1, 2])).unwrap_err();
        assert_eq!(array.disposition(false), Disposition::Ambiguous);
        assert_eq!(array.disposition(true), Disposition::Retry);
        // 88 without any sub_code stays 88 and is permanent (unknown).
        let bare88 = check_body("x", &json!({"errcode": 88, "errmsg": "鉴权"})).unwrap_err();
        assert_eq!(bare88.code(), Some(88));
        assert_eq!(bare88.disposition(false), Disposition::Permanent);
    }

    #[test]
    fn transport_errors_depend_on_whether_the_request_left() {
        let connect = Error::Connect {
            api: "report_create",
            message: "refused".to_owned(),
        };
        assert_eq!(connect.disposition(false), Disposition::Retry);
        let no_answer = Error::NoAnswer {
            api: "report_create",
            message: "timeout".to_owned(),
        };
        assert_eq!(no_answer.disposition(false), Disposition::Ambiguous);
        assert_eq!(no_answer.disposition(true), Disposition::Retry);
        // A gateway may answer 5xx after the backend committed: ambiguous for a create,
        // retried for idempotent calls.
        for (status, create, idempotent) in [
            (500, Disposition::Ambiguous, Disposition::Retry),
            (502, Disposition::Ambiguous, Disposition::Retry),
            (503, Disposition::Ambiguous, Disposition::Retry),
            (504, Disposition::Ambiguous, Disposition::Retry),
            (429, Disposition::Retry, Disposition::Retry),
            (404, Disposition::Permanent, Disposition::Permanent),
        ] {
            let e = Error::Http {
                api: "report_create",
                status,
            };
            assert_eq!(e.disposition(false), create, "{status}");
            assert_eq!(e.disposition(true), idempotent, "{status}");
            let list = Error::Http {
                api: "report_list",
                status,
            };
            assert_eq!(list.disposition(false), idempotent, "{status}");
        }
    }

    #[test]
    fn request_id_is_kept_in_the_message_and_display() {
        let e = check_body(
            "report_create",
            &json!({"errcode": 88, "sub_code": "60011", "sub_msg": "无权限", "errmsg": "x",
                "request_id": "4xq1mzp0a7k2"}),
        )
        .unwrap_err();
        assert_eq!(e.request_id(), Some("4xq1mzp0a7k2"));
        assert!(
            e.message().ends_with("(request_id 4xq1mzp0a7k2)"),
            "{}",
            e.message()
        );
        assert!(e.to_string().contains("request_id 4xq1mzp0a7k2"), "{e}");
        let without = check_body("x", &json!({"errcode": -1, "errmsg": "busy"})).unwrap_err();
        assert_eq!(without.request_id(), None);
        assert!(!without.message().contains("request_id"));
        let huge = "r".repeat(10_000);
        let bloated = check_body("x", &json!({"errcode": -1, "request_id": huge})).unwrap_err();
        assert_eq!(bloated.request_id(), None);
    }

    #[test]
    fn v1_refusals_of_the_token_endpoint_defer_like_refused_credentials() {
        let body = br#"{"code":"invalidClientIdOrSecret","message":"bad","requestid":"R1"}"#;
        let e = refused("gettoken", 400, body).expect("a v1 error body");
        assert_eq!(e.disposition(true), Disposition::Defer(CREDENTIALS_WAIT));
        assert_eq!(e.request_id(), Some("R1"));
        assert!(e.to_string().contains("invalidClientIdOrSecret"), "{e}");
        let busy = refused("gettoken", 500, br#"{"code":"systemBusy"}"#).unwrap();
        assert_eq!(busy.disposition(true), Disposition::Retry);
        let throttled = refused("gettoken", 429, br#"{"code":"x"}"#).unwrap();
        assert_eq!(throttled.disposition(true), Disposition::Retry);
        assert!(refused("gettoken", 502, b"<html>").is_none());
    }

    #[test]
    fn the_errcode_label_is_bounded() {
        assert_eq!(errcode_label(90018), "90018");
        assert_eq!(errcode_label(-1), "-1");
        assert_eq!(errcode_label(777_777), "other");
        assert_eq!(errcode_label(i64::MAX), "other");
    }
}
