//! HTTP handlers of the fake DingTalk API, and the validation behind them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::{
    CreatedContent, CreatedReport, FIRST_CURSOR_CEILING, FakeDingTalk, FakeTemplate, Fault, Ledger,
    MAX_CONTENT_CHARS, MAX_LIST_WINDOW_MS, MAX_REMEMBERED_CURSORS, MAX_REMEMBERED_TOKENS,
    MAX_STORED_REPORTS, TokenEntry, normalised_listing,
};

/// A JSON answer: `Ok` for success, `Err` for an error body; both are sent with HTTP 200.
type Answer = Result<Value, Value>;

/// Builds the router with every endpoint.
pub(super) fn router(fake: FakeDingTalk) -> Router {
    Router::new()
        .route("/gettoken", get(gettoken).fallback(need_get))
        .route("/v1.0/oauth2/accessToken", post(access_token_v1))
        .route("/topapi/report/create", post(create).fallback(need_post))
        .route(
            "/topapi/report/template/getbyname",
            post(getbyname).fallback(need_post),
        )
        .route("/topapi/report/list", post(list).fallback(need_post))
        .fallback(unknown_path)
        .with_state(fake)
}

// ---------------------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------------------

/// What to do with an answer after the call was processed normally.
enum AfterCommit {
    /// Send it.
    Answer,
    /// Sleep this long, then send it.
    Hang(Duration),
    /// Replace it with this HTTP status (the work is done, the answer is lost).
    Http(u16),
    /// Send `result` as an object `{"report_id": …}`.
    ResultObject,
    /// Send it without `result`.
    NoResult,
}

/// Plays a scripted fault: `Err` is the answer to give instead of processing the call,
/// `Ok(after)` means "process the call normally (after any delay), then do `after`".
async fn apply_fault(
    fake: &FakeDingTalk,
    fault: Option<Fault>,
    topapi: bool,
) -> Result<AfterCommit, Response> {
    match fault {
        None => Ok(AfterCommit::Answer),
        Some(Fault::Delay(delay)) => {
            pause(delay).await;
            Ok(AfterCommit::Answer)
        }
        Some(Fault::CommitThenHang(delay)) => Ok(AfterCommit::Hang(delay)),
        Some(Fault::CommitThenHttp(status)) => Ok(AfterCommit::Http(status)),
        Some(Fault::CommitThenResultObject) => Ok(AfterCommit::ResultObject),
        Some(Fault::CommitWithoutResult) => Ok(AfterCommit::NoResult),
        Some(Fault::HangWithoutCommit(delay)) => {
            pause(delay).await;
            Err(fault_response(fake, &Fault::Http(504), topapi))
        }
        Some(fault) => Err(fault_response(fake, &fault, topapi)),
    }
}

/// Sends `answer` as `after` says (a successful answer only is reshaped).
async fn finish(fake: &FakeDingTalk, answer: Answer, after: AfterCommit, topapi: bool) -> Response {
    match (after, answer) {
        (AfterCommit::Hang(delay), answer) => {
            pause(delay).await;
            json_response(answer, topapi)
        }
        (AfterCommit::Http(status), _) => fault_response(fake, &Fault::Http(status), topapi),
        (AfterCommit::ResultObject, Ok(mut body)) => {
            if let Some(id) = body.get("result").cloned() {
                body["result"] = json!({"report_id": id});
            }
            json_response(Ok(body), topapi)
        }
        (AfterCommit::NoResult, Ok(mut body)) => {
            if let Value::Object(map) = &mut body {
                map.remove("result");
            }
            json_response(Ok(body), topapi)
        }
        (_, answer) => json_response(answer, topapi),
    }
}

async fn gettoken(State(fake): State<FakeDingTalk>, RawQuery(query): RawQuery) -> Response {
    fake.inner.gettoken_calls.fetch_add(1, Ordering::SeqCst);
    let (latency, fault) = {
        let mut ledger = fake.ledger();
        (ledger.latency, ledger.gettoken_faults.pop_front())
    };
    pause(latency).await;
    let query = parse_urlencoded(query.as_deref().unwrap_or(""));
    let after = match apply_fault(&fake, fault, false).await {
        Ok(after) => after,
        Err(response) => return response,
    };
    let answer = fake.issue_token(&query);
    tracing::debug!(errcode = errcode_of(&answer), "sandbox gettoken");
    finish(&fake, answer, after, false).await
}

/// `POST /v1.0/oauth2/accessToken` (the current token endpoint of api.dingtalk.com):
/// `{"appKey","appSecret"}` → `{"accessToken","expireIn"}`; errors are HTTP 400 with
/// `{"code","message","requestid"}`. Same tokens and faults as `gettoken`.
async fn access_token_v1(State(fake): State<FakeDingTalk>, body: Bytes) -> Response {
    fake.inner.gettoken_calls.fetch_add(1, Ordering::SeqCst);
    fake.inner.access_token_calls.fetch_add(1, Ordering::SeqCst);
    let (latency, fault) = {
        let mut ledger = fake.ledger();
        (ledger.latency, ledger.gettoken_faults.pop_front())
    };
    pause(latency).await;
    let after = match apply_fault(&fake, fault, false).await {
        Ok(after) => after,
        Err(response) => return response,
    };
    let refuse = |code: &str, message: &str| {
        let body = json!({"code": code, "message": message, "requestid": random_request_id()});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    };
    let Ok(Value::Object(params)) = serde_json::from_slice::<Value>(&body) else {
        return refuse("MissingParameter", "请求体必须是JSON对象");
    };
    let text = |key: &str| {
        params
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let query: HashMap<String, String> = [
        ("appkey".to_owned(), text("appKey")),
        ("appsecret".to_owned(), text("appSecret")),
    ]
    .into();
    let answer = match fake.issue_token(&query) {
        Ok(token) => Ok(json!({
            "accessToken": token["access_token"],
            "expireIn": token["expires_in"],
        })),
        Err(error) if error["errcode"] == 40035 => {
            return refuse("MissingParameter", "缺少参数 appKey 或 appSecret");
        }
        Err(_) => {
            return refuse("invalidClientIdOrSecret", "无效的clientId或者clientSecret");
        }
    };
    tracing::debug!("sandbox v1.0/oauth2/accessToken");
    finish(&fake, answer, after, false).await
}

async fn create(
    State(fake): State<FakeDingTalk>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    fake.inner.create_calls.fetch_add(1, Ordering::SeqCst);
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let recorded = recorded_param(parsed.as_ref(), &body);
    let (latency, fault) = {
        let mut ledger = fake.ledger();
        ledger.create_requests.push_back(recorded);
        while ledger.create_requests.len() > MAX_STORED_REPORTS {
            ledger.create_requests.pop_front();
        }
        (ledger.latency, ledger.create_faults.pop_front())
    };
    pause(latency).await;
    let query = parse_urlencoded(query.as_deref().unwrap_or(""));
    let after = match apply_fault(&fake, fault, true).await {
        Ok(after) => after,
        Err(response) => return response,
    };
    if !fake.take_quota() {
        return quota_used_up(&fake);
    }
    let answer = fake.create_report(&query, parsed.as_ref());
    tracing::debug!(errcode = errcode_of(&answer), "sandbox report/create");
    finish(&fake, answer, after, true).await
}

async fn getbyname(
    State(fake): State<FakeDingTalk>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.inner.getbyname_calls.fetch_add(1, Ordering::SeqCst);
    let latency = fake.ledger().latency;
    pause(latency).await;
    if !fake.take_quota() {
        return quota_used_up(&fake);
    }
    let query = parse_urlencoded(query.as_deref().unwrap_or(""));
    let answer = fake.template_by_name(&query, &headers, &body);
    tracing::debug!(
        errcode = errcode_of(&answer),
        "sandbox report/template/getbyname"
    );
    json_response(answer, true)
}

async fn list(
    State(fake): State<FakeDingTalk>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    fake.inner.list_calls.fetch_add(1, Ordering::SeqCst);
    let (latency, fault) = {
        let mut ledger = fake.ledger();
        (ledger.latency, ledger.list_faults.pop_front())
    };
    pause(latency).await;
    let after = match apply_fault(&fake, fault, true).await {
        Ok(after) => after,
        Err(response) => return response,
    };
    if !fake.take_quota() {
        return quota_used_up(&fake);
    }
    let query = parse_urlencoded(query.as_deref().unwrap_or(""));
    let answer = fake.list_reports(&query, &headers, &body);
    tracing::debug!(errcode = errcode_of(&answer), "sandbox report/list");
    finish(&fake, answer, after, true).await
}

async fn need_get(State(fake): State<FakeDingTalk>) -> Response {
    let latency = fake.ledger().latency;
    pause(latency).await;
    json_response(Err(bare(43001, "需要GET请求")), false)
}

async fn need_post(State(fake): State<FakeDingTalk>) -> Response {
    let latency = fake.ledger().latency;
    pause(latency).await;
    json_response(Err(bare(43002, "需要POST请求")), true)
}

async fn unknown_path(State(fake): State<FakeDingTalk>, uri: Uri) -> Response {
    let latency = fake.ledger().latency;
    pause(latency).await;
    if uri.path().starts_with("/topapi") {
        let body = json!({"errcode": 22, "errmsg": "不合法ApiName", "sub_msg": "不合法ApiName"});
        json_response(Err(body), true)
    } else {
        (StatusCode::NOT_FOUND, "404 Not Found").into_response()
    }
}

// ---------------------------------------------------------------------------------------
// Endpoint logic (synchronous: the ledger lock is never held across an await)
// ---------------------------------------------------------------------------------------

impl FakeDingTalk {
    /// `gettoken`: checks the credentials, returns the current token (renewed) or a new one.
    fn issue_token(&self, query: &HashMap<String, String>) -> Answer {
        let options = &self.inner.options;
        let app_key = query.get("appkey").map_or("", |s| s.trim());
        let app_secret = query.get("appsecret").map_or("", |s| s.trim());
        if app_key.is_empty() {
            return Err(bare(40035, "缺少参数 corpid or appkey"));
        }
        if app_secret.is_empty() {
            return Err(bare(40035, "缺少参数 corpsecret or appsecret"));
        }
        if app_key != options.app_key || app_secret != options.app_secret {
            return Err(bare(40096, "不合法的appKey或appSecret"));
        }
        let now = tokio::time::Instant::now();
        let expires_at = now
            .checked_add(options.token_ttl)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400));
        let mut ledger = self.ledger();
        let current = ledger
            .current_token
            .clone()
            .filter(|token| ledger.tokens.get(token).is_some_and(|e| e.expires_at > now));
        let token = match current {
            Some(token) => token,
            None => {
                let token = random_hex32();
                ledger.current_token = Some(token.clone());
                token
            }
        };
        ledger
            .tokens
            .insert(token.clone(), TokenEntry { expires_at });
        prune_tokens(&mut ledger);
        Ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "access_token": token,
            "expires_in": options.token_ttl.as_secs(),
        }))
    }

    /// `report/create`.
    fn create_report(&self, query: &HashMap<String, String>, body: Option<&Value>) -> Answer {
        let options = &self.inner.options;
        let mut ledger = self.ledger();
        check_token(&ledger, query)?;

        let second = chrono::Utc::now().timestamp();
        if ledger.qps_second == second {
            ledger.qps_count = ledger.qps_count.saturating_add(1);
        } else {
            ledger.qps_second = second;
            ledger.qps_count = 1;
        }
        if ledger.qps_count > options.qps_limit {
            self.inner.qps_rejections.fetch_add(1, Ordering::SeqCst);
            return Err(wrapped("90018"));
        }

        let param = create_param(body)?;
        let template_id = required_str(&param, "template_id")?;
        let userid = required_str(&param, "userid")?;
        let dd_from = required_str(&param, "dd_from")?;
        let to_chat = required_bool(&param, "to_chat")?;
        let raw_contents = match param.get("contents") {
            None | Some(Value::Null) => return Err(missing("contents")),
            Some(Value::Array(items)) if items.is_empty() => return Err(missing("contents")),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(param_error("contents 必须是数组")),
        };
        let to_userids = optional_str_list(&param, "to_userids")?;
        let to_cids = optional_str_list(&param, "to_cids")?;

        let template = options
            .templates
            .iter()
            .find(|t| t.id == template_id)
            .ok_or_else(|| param_error(&format!("模板不存在 template_id={template_id}")))?;
        check_user(&options.known_users, userid)?;

        let mut contents = Vec::with_capacity(raw_contents.len());
        for item in raw_contents {
            contents.push(validate_content(template, item)?);
        }

        let report = CreatedReport {
            report_id: random_hex32(),
            template_id: template.id.clone(),
            template_name: template.name.clone(),
            userid: userid.to_owned(),
            dd_from: dd_from.to_owned(),
            to_chat,
            to_userids,
            to_cids,
            contents,
            created_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let report_id = report.report_id.clone();
        ledger.reports.push_back(report);
        while ledger.reports.len() > MAX_STORED_REPORTS {
            ledger.reports.pop_front();
        }
        Ok(json!({"errcode": 0, "errmsg": "ok", "result": report_id}))
    }

    /// `report/template/getbyname`.
    fn template_by_name(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Answer {
        let options = &self.inner.options;
        check_token(&self.ledger(), query)?;
        let params = body_params(headers, body)?;
        let template_name = required_str(&params, "template_name")?;
        let userid = required_str(&params, "userid")?;
        let template = options
            .templates
            .iter()
            .find(|t| t.name == template_name)
            .ok_or_else(|| bare(400002, "模板不存在"))?;
        check_user(&options.known_users, userid)?;
        let fields: Vec<Value> = template
            .fields
            .iter()
            .map(|f| json!({"field_name": f.name, "sort": f.sort, "type": f.kind}))
            .collect();
        let mut result = json!({
            "id": template.id,
            "name": template.name,
            "userid": userid,
            "user_name": user_name(userid),
            "fields": fields,
            "default_receivers": [{"userid": "lead01", "user_name": "主管A"}],
        });
        if !template.default_received_convs.is_empty() {
            let convs: Vec<Value> = template
                .default_received_convs
                .iter()
                .map(|(cid, title)| json!({"conversation_id": cid, "title": title}))
                .collect();
            result["default_received_convs"] = Value::Array(convs);
        }
        Ok(json!({"errcode": 0, "errmsg": "ok", "result": result}))
    }

    /// `report/list`.
    fn list_reports(
        &self,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Answer {
        let mut ledger = self.ledger();
        check_token(&ledger, query)?;
        let params = body_params(headers, body)?;
        let start_time = required_int(&params, "start_time")?;
        let end_time = required_int(&params, "end_time")?;
        let size = required_int(&params, "size")?;
        let cursor = optional_int(&params, "cursor")?.unwrap_or(0);
        if !(1..=20).contains(&size) {
            return Err(param_error("size 必须在 1 到 20 之间"));
        }
        if start_time > end_time {
            return Err(param_error("start_time 不能大于 end_time"));
        }
        if end_time.saturating_sub(start_time) > MAX_LIST_WINDOW_MS {
            return Err(param_error("查询时间跨度不能超过180天"));
        }
        // Cursors are opaque: 0 starts, any other value must be one this fake handed out.
        let offset = match cursor {
            0 => 0,
            c => *ledger
                .list_cursors
                .get(&c)
                .ok_or_else(|| param_error("cursor 不合法"))?,
        };
        let template_name = optional_str(&params, "template_name")?;
        let userid = optional_str(&params, "userid")?;
        let normalise = self.inner.options.normalise_listed_text;

        let matching: Vec<&CreatedReport> = ledger
            .reports
            .iter()
            .filter(|r| (start_time..=end_time).contains(&r.created_at_ms))
            .filter(|r| template_name.is_none_or(|name| r.template_name == name))
            .filter(|r| userid.is_none_or(|id| r.userid == id))
            .collect();
        let page_size = usize::try_from(size).unwrap_or(20);
        let page: Vec<Value> = matching
            .iter()
            .skip(offset)
            .take(page_size)
            .map(|r| report_json(r, normalise))
            .collect();
        let next_offset = offset.saturating_add(page.len());
        let has_more = next_offset < matching.len();
        let next_cursor = next_list_cursor(&mut ledger, next_offset);
        Ok(json!({
            "errcode": 0,
            "errmsg": "ok",
            "result": {
                "data_list": page,
                "size": page.len(),
                "next_cursor": next_cursor,
                "has_more": has_more,
            },
        }))
    }
}

/// Hands out an opaque cursor for `offset`: a large number drawn below the previous one, so
/// cursors never grow (like DingTalk's, nothing about them is an offset). Like the doc's
/// example, a cursor is given even with `has_more: false`.
fn next_list_cursor(ledger: &mut Ledger, offset: usize) -> i64 {
    let step = rand::rng().random_range(1..1_000_000i64);
    let mut cursor = ledger.last_cursor - step;
    if cursor < 1_000_000 {
        cursor = FIRST_CURSOR_CEILING - step;
    }
    ledger.last_cursor = cursor;
    if ledger.list_cursors.len() >= MAX_REMEMBERED_CURSORS {
        ledger.list_cursors.clear();
    }
    ledger.list_cursors.insert(cursor, offset);
    cursor
}

fn report_json(report: &CreatedReport, normalise: bool) -> Value {
    let contents: Vec<Value> = report
        .contents
        .iter()
        .map(|c| {
            let value = if normalise {
                normalised_listing(&c.content)
            } else {
                c.content.clone()
            };
            json!({"key": c.key, "sort": c.sort.to_string(), "type": "1", "value": value})
        })
        .collect();
    json!({
        "report_id": report.report_id,
        "template_name": report.template_name,
        "creator_id": report.userid,
        "creator_name": user_name(&report.userid),
        "create_time": report.created_at_ms,
        "dept_name": "",
        "remark": "",
        "contents": contents,
    })
}

/// Validates one content against the template and returns it as stored (truncated).
fn validate_content(template: &FakeTemplate, item: &Value) -> Result<CreatedContent, Value> {
    let Value::Object(item) = item else {
        return Err(param_error("contents 的元素必须是对象"));
    };
    let key = required_str(item, "key")?;
    let sort = required_int(item, "sort")?;
    let kind = required_int(item, "type")?;
    let content_type = required_str(item, "content_type")?;
    let content = match item.get("content") {
        None | Some(Value::Null) => return Err(missing("content")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(param_error("content 必须是字符串")),
    };
    let field = template
        .fields
        .iter()
        .find(|f| f.name == key)
        .ok_or_else(|| param_error(&format!("模板 {} 没有字段 {key}", template.name)))?;
    if field.sort != sort {
        return Err(param_error(&format!(
            "字段 {key} 的 sort 应为 {}，实际为 {sort}",
            field.sort
        )));
    }
    if kind != 1 {
        return Err(param_error(&format!(
            "字段 {key} 的 type 应为 1，实际为 {kind}"
        )));
    }
    if content_type != "markdown" {
        return Err(param_error(&format!(
            "字段 {key} 的 content_type 应为 markdown，实际为 {content_type}"
        )));
    }
    let content: String = content.chars().take(MAX_CONTENT_CHARS).collect();
    Ok(CreatedContent {
        key: key.to_owned(),
        sort,
        content,
    })
}

// ---------------------------------------------------------------------------------------
// Checks and parameter helpers
// ---------------------------------------------------------------------------------------

fn check_token(ledger: &Ledger, query: &HashMap<String, String>) -> Result<(), Value> {
    let token = query.get("access_token").map_or("", |s| s.trim());
    if token.is_empty() {
        return Err(wrapped_with("40000", "access_token is blank"));
    }
    match ledger.tokens.get(token) {
        None => Err(wrapped("40014")),
        Some(entry) if entry.expires_at <= tokio::time::Instant::now() => Err(wrapped("42001")),
        Some(_) => Ok(()),
    }
}

fn check_user(known_users: &[String], userid: &str) -> Result<(), Value> {
    if known_users.is_empty() || known_users.iter().any(|u| u == userid) {
        Ok(())
    } else {
        Err(bare(60121, "找不到该用户"))
    }
}

/// Drops the soonest-expiring tokens beyond [`MAX_REMEMBERED_TOKENS`].
fn prune_tokens(ledger: &mut Ledger) {
    while ledger.tokens.len() > MAX_REMEMBERED_TOKENS {
        let oldest = ledger
            .tokens
            .iter()
            .filter(|(token, _)| ledger.current_token.as_ref() != Some(*token))
            .min_by_key(|(_, entry)| entry.expires_at)
            .map(|(token, _)| token.clone());
        match oldest {
            Some(token) => ledger.tokens.remove(&token),
            None => break,
        };
    }
}

/// Extracts `create_report_param` (an object, or a string holding a JSON object).
fn create_param(body: Option<&Value>) -> Result<Map<String, Value>, Value> {
    let Some(Value::Object(body)) = body else {
        return Err(bare(43004, "需要JSON格式"));
    };
    match body.get("create_report_param") {
        None | Some(Value::Null) => Err(missing("create_report_param")),
        Some(Value::Object(param)) => Ok(param.clone()),
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(param)) => Ok(param),
            _ => Err(bare(43004, "需要JSON格式")),
        },
        Some(_) => Err(param_error("create_report_param 必须是对象")),
    }
}

/// What [`FakeDingTalk::create_requests`] records for one create body.
fn recorded_param(parsed: Option<&Value>, raw: &[u8]) -> Value {
    match parsed {
        Some(Value::Object(body)) => match body.get("create_report_param") {
            Some(Value::String(text)) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            Some(param) => param.clone(),
            None => Value::Object(body.clone()),
        },
        Some(other) => other.clone(),
        None => Value::String(String::from_utf8_lossy(raw).into_owned()),
    }
}

/// Parses a getbyname/list body: JSON object, form-encoded, or empty.
fn body_params(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => return Ok(map),
        Ok(_) => return Err(bare(43004, "需要JSON格式")),
        Err(_) => {}
    }
    let declared_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-www-form-urlencoded"));
    let text = String::from_utf8_lossy(body);
    let looks_like_form = !text.trim_start().starts_with(['{', '[']) && text.contains('=');
    if declared_form || looks_like_form {
        Ok(parse_urlencoded(&text)
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect())
    } else {
        Err(bare(43004, "需要JSON格式"))
    }
}

fn required_str<'a>(params: &'a Map<String, Value>, name: &str) -> Result<&'a str, Value> {
    optional_str(params, name)?.ok_or_else(|| missing(name))
}

/// A string parameter; absent, null or blank is `None`.
fn optional_str<'a>(params: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Value> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(param_error(&format!("{name} 必须是字符串"))),
    }
}

fn required_int(params: &Map<String, Value>, name: &str) -> Result<i64, Value> {
    optional_int(params, name)?.ok_or_else(|| missing(name))
}

/// An integer parameter given as a number or a numeric string; absent/null/blank is `None`.
fn optional_int(params: &Map<String, Value>, name: &str) -> Result<Option<i64>, Value> {
    let invalid = || param_error(&format!("{name} 必须是整数"));
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) => Ok(Some(v)),
            None => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                _ => Err(invalid()),
            },
        },
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s.trim().parse::<i64>().map(Some).map_err(|_| invalid()),
        Some(_) => Err(invalid()),
    }
}

fn required_bool(params: &Map<String, Value>, name: &str) -> Result<bool, Value> {
    match params.get(name) {
        None | Some(Value::Null) => Err(missing(name)),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.trim() == "true" => Ok(true),
        Some(Value::String(s)) if s.trim() == "false" => Ok(false),
        Some(_) => Err(param_error(&format!("{name} 必须是布尔值"))),
    }
}

fn optional_str_list(params: &Map<String, Value>, name: &str) -> Result<Vec<String>, Value> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(param_error(&format!("{name} 的元素必须是字符串"))),
            })
            .collect(),
        Some(_) => Err(param_error(&format!("{name} 必须是字符串数组"))),
    }
}

/// Parses `a=1&b=2` with percent-decoding and `+` as space; the first value of a key wins.
fn parse_urlencoded(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(percent_decode(key))
            .or_insert_with(|| percent_decode(value));
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------------------

/// A plausible errmsg for an errcode (or sub_code).
fn message_for(code: i64) -> &'static str {
    match code {
        -1 => "系统繁忙",
        22 => "不合法ApiName",
        88 => "ding talk error",
        40000 => "access_token is blank",
        40014 => "不合法的access_token",
        40035 => "缺少参数",
        40096 => "不合法的appKey或appSecret",
        42001 => "access_token过期",
        43001 => "需要GET请求",
        43002 => "需要POST请求",
        43004 => "需要JSON格式",
        60011 => "没有调用该接口的权限",
        60020 => "访问ip不在白名单之中",
        60121 => "找不到该用户",
        90018 => "请求过于频繁，限制将在 1 秒后结束",
        400002 => "参数错误",
        _ => "系统错误",
    }
}

fn bare(code: i64, message: &str) -> Value {
    json!({"errcode": code, "errmsg": message})
}

fn missing(name: &str) -> Value {
    bare(40035, &format!("缺少参数 {name}"))
}

fn param_error(detail: &str) -> Value {
    bare(400002, &format!("参数错误: {detail}"))
}

/// `errcode: 88` with this sub_code and its usual sub_msg.
fn wrapped(sub_code: &str) -> Value {
    let message = sub_code
        .trim()
        .parse::<i64>()
        .map_or("系统错误", message_for);
    wrapped_with(sub_code, message)
}

fn wrapped_with(sub_code: &str, sub_msg: &str) -> Value {
    json!({
        "errcode": 88,
        "errmsg": format!("ding talk error[subcode={sub_code},submsg={sub_msg}]"),
        "sub_code": sub_code,
        "sub_msg": sub_msg,
    })
}

fn errcode_of(answer: &Answer) -> i64 {
    match answer {
        Ok(_) => 0,
        Err(body) => body.get("errcode").and_then(Value::as_i64).unwrap_or(-1),
    }
}

/// Sends the answer with HTTP 200; topapi answers also carry a `request_id`.
fn json_response(answer: Answer, with_request_id: bool) -> Response {
    let mut body = match answer {
        Ok(body) | Err(body) => body,
    };
    if with_request_id && let Value::Object(map) = &mut body {
        map.insert("request_id".to_owned(), Value::String(random_request_id()));
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// The answer to a metered call once the organisation's monthly quota is used up.
fn quota_used_up(fake: &FakeDingTalk) -> Response {
    fault_response(fake, &Fault::Wrapped("90020".to_owned()), true)
}

/// The answer for an injected fault (not `Delay` / `CommitThenHang`, handled by the caller).
fn fault_response(fake: &FakeDingTalk, fault: &Fault, topapi: bool) -> Response {
    tracing::debug!(?fault, "sandbox injecting fault");
    match fault {
        Fault::Errcode(code) => json_response(Err(bare(*code, message_for(*code))), topapi),
        Fault::Wrapped(sub_code) => {
            if sub_code.trim() == "90018" {
                fake.inner.qps_rejections.fetch_add(1, Ordering::SeqCst);
            }
            json_response(Err(wrapped(sub_code)), topapi)
        }
        Fault::Http(code) | Fault::CommitThenHttp(code) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::BAD_GATEWAY);
            let reason = status.canonical_reason().unwrap_or("Error");
            (status, format!("{} {reason}", status.as_u16())).into_response()
        }
        Fault::NonJson => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!DOCTYPE html><html><head><title>访问被拒绝</title></head>\
             <body><h1>Access Denied</h1><p>您的访问因安全原因被拦截，请稍后再试。</p></body></html>",
        )
            .into_response(),
        Fault::Oversized(size) => {
            const CHUNK: u64 = 64 * 1024;
            let chunk = bytes::Bytes::from(vec![b' '; CHUNK as usize]);
            let chunks = size.div_ceil(CHUNK);
            let stream = futures::stream::iter(
                (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
            );
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                axum::body::Body::from_stream(stream),
            )
                .into_response()
        }
        Fault::IpBan => (
            StatusCode::OK,
            Json(json!({"status": 1111, "wait": 5, "source": "x5", "punish": "deny"})),
        )
            .into_response(),
        Fault::Delay(_)
        | Fault::CommitThenHang(_)
        | Fault::HangWithoutCommit(_)
        | Fault::CommitThenResultObject
        | Fault::CommitWithoutResult => {
            json_response(Err(bare(-1, message_for(-1))), topapi)
        }
    }
}

async fn pause(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn random_hex32() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn random_request_id() -> String {
    let mut rng = rand::rng();
    (0..13)
        .map(|_| {
            let n = rng.random_range(0..36u32);
            char::from_digit(n, 36).unwrap_or('0')
        })
        .collect()
}

fn user_name(userid: &str) -> String {
    format!("沙箱用户{userid}")
}
