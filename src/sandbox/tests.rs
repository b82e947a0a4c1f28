//! Unit tests of the fake DingTalk API, driving `router()` directly.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

async fn call(fake: &FakeDingTalk, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    let response = fake.router().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn token(fake: &FakeDingTalk) -> String {
    let (_, body) = call(
        fake,
        "GET",
        "/gettoken?appkey=sandbox-app-key&appsecret=sandbox-app-secret",
        "",
    )
    .await;
    assert_eq!(body["errcode"], 0, "{body}");
    body["access_token"].as_str().expect("token").to_owned()
}

fn create_body(userid: &str, first: &str) -> String {
    json!({"create_report_param": {
        "template_id": DAILY_REPORT_TEMPLATE_ID,
        "userid": userid,
        "dd_from": "dingtalk-relay",
        "to_chat": false,
        "to_userids": ["lead01"],
        "contents": [
            {"key": "今日完成工作", "sort": 0, "type": 1, "content_type": "markdown", "content": first},
            {"key": "未完成工作", "sort": "1", "type": "1", "content_type": "markdown", "content": "无"},
        ],
    }})
    .to_string()
}

async fn create(fake: &FakeDingTalk, token: &str, body: &str) -> Value {
    let uri = format!("/topapi/report/create?access_token={token}");
    let (status, value) = call(fake, "POST", &uri, body).await;
    assert_eq!(status, StatusCode::OK);
    value
}

#[tokio::test]
async fn gettoken_issues_same_token_and_checks_credentials() {
    let fake = FakeDingTalk::new(FakeOptions::default());
    let (status, first) = call(
        &fake,
        "GET",
        "/gettoken?appkey=sandbox-app-key&appsecret=sandbox-app-secret",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["errcode"], 0);
    assert_eq!(first["errmsg"], "ok");
    assert_eq!(first["expires_in"], 7200);
    let tok = first["access_token"].as_str().expect("token");
    assert_eq!(tok.len(), 32);
    assert!(tok.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(token(&fake).await, tok);

    let (status, wrong) = call(
        &fake,
        "GET",
        "/gettoken?appkey=sandbox-app-key&appsecret=nope",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        wrong,
        json!({"errcode": 40096, "errmsg": "不合法的appKey或appSecret"})
    );
    let (_, missing) = call(&fake, "GET", "/gettoken?appsecret=x", "").await;
    assert_eq!(missing["errcode"], 40035);
    assert_eq!(fake.gettoken_calls(), 4);

    fake.invalidate_tokens();
    let renewed = token(&fake).await;
    assert_ne!(renewed, tok);
}

#[tokio::test]
async fn token_expires_after_ttl() {
    let fake = FakeDingTalk::new(FakeOptions {
        token_ttl: Duration::from_millis(30),
        ..FakeOptions::default()
    });
    let first = token(&fake).await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let answer = create(&fake, &first, &create_body("u1", "x")).await;
    assert_eq!(answer["sub_code"], "42001");
    assert_ne!(token(&fake).await, first);
}

#[tokio::test]
async fn create_stores_report_and_truncates() {
    let fake = FakeDingTalk::new(FakeOptions::default());
    let tok = token(&fake).await;
    let long: String = "长".repeat(1500);
    let answer = create(&fake, &tok, &create_body("u1", &long)).await;
    assert_eq!(answer["errcode"], 0, "{answer}");
    assert_eq!(answer["errmsg"], "ok");
    let id = answer["result"].as_str().expect("id");
    assert_eq!(id.len(), 32);
    assert!(answer["request_id"].is_string());

    let reports = fake.reports();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(report.report_id, id);
    assert_eq!(report.template_name, "日报");
    assert_eq!(report.userid, "u1");
    assert_eq!(report.to_userids, vec!["lead01".to_owned()]);
    assert_eq!(report.contents[0].content.chars().count(), 1000);
    assert_eq!(report.contents[1].sort, 1);
    assert_eq!(fake.create_calls(), 1);
    assert_eq!(fake.create_requests()[0]["userid"], "u1");
}

#[tokio::test]
async fn create_rejects_bad_tokens() {
    let fake = FakeDingTalk::new(FakeOptions::default());
    let body = create_body("u1", "x");
    let unknown = create(&fake, "0123456789abcdef0123456789abcdef", &body).await;
    assert_eq!(unknown["errcode"], 88);
    assert_eq!(unknown["sub_code"], "40014");
    let errmsg = unknown["errmsg"].as_str().expect("errmsg");
    assert!(errmsg.contains("subcode=40014"), "{errmsg}");

    let (_, blank) = call(&fake, "POST", "/topapi/report/create", &body).await;
    assert_eq!(blank["sub_code"], "40000");

    let tok = token(&fake).await;
    fake.expire_tokens();
    let expired = create(&fake, &tok, &body).await;
    assert_eq!(expired["errcode"], 88);
    assert_eq!(expired["sub_code"], "42001");
    let fresh = token(&fake).await;
    assert_ne!(fresh, tok);
    assert_eq!(create(&fake, &fresh, &body).await["errcode"], 0);

    fake.invalidate_tokens();
    assert_eq!(create(&fake, &fresh, &body).await["sub_code"], "40014");
    assert!(fake.reports().len() == 1);
    assert_eq!(fake.create_calls(), 5);
}

#[tokio::test]
async fn create_validates_parameters() {
    let fake = FakeDingTalk::new(FakeOptions {
        known_users: vec!["u1".to_owned()],
        ..FakeOptions::default()
    });
    let tok = token(&fake).await;
    let base: Value = serde_json::from_str(&create_body("u1", "x")).expect("json");
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut body = base.clone();
        edit(&mut body["create_report_param"]);
        body.to_string()
    };

    let wrong_sort = with(&|p| p["contents"][0]["sort"] = json!(2));
    assert_eq!(create(&fake, &tok, &wrong_sort).await["errcode"], 400002);
    let wrong_key = with(&|p| p["contents"][0]["key"] = json!("心得"));
    assert_eq!(create(&fake, &tok, &wrong_key).await["errcode"], 400002);
    let wrong_type = with(&|p| p["contents"][0]["type"] = json!(2));
    assert_eq!(create(&fake, &tok, &wrong_type).await["errcode"], 400002);
    let wrong_ct = with(&|p| p["contents"][0]["content_type"] = json!("text"));
    assert_eq!(create(&fake, &tok, &wrong_ct).await["errcode"], 400002);
    let wrong_template = with(&|p| p["template_id"] = json!("nope"));
    let answer = create(&fake, &tok, &wrong_template).await;
    assert_eq!(answer["errcode"], 400002);
    assert!(answer["errmsg"].as_str().expect("msg").contains("模板"));
    let no_dd_from = with(&|p| {
        p.as_object_mut().expect("obj").remove("dd_from");
    });
    let answer = create(&fake, &tok, &no_dd_from).await;
    assert_eq!(answer["errcode"], 40035);
    assert_eq!(answer["errmsg"], "缺少参数 dd_from");
    let stranger = with(&|p| p["userid"] = json!("u2"));
    assert_eq!(create(&fake, &tok, &stranger).await["errcode"], 60121);
    assert_eq!(create(&fake, &tok, "not json{").await["errcode"], 43004);

    assert!(fake.reports().is_empty());
    assert_eq!(fake.create_requests().len(), 8);
    assert_eq!(fake.create_requests()[7], json!("not json{"));
}

#[tokio::test]
async fn qps_limit_rejects_with_90018() {
    let fake = FakeDingTalk::new(FakeOptions {
        qps_limit: 3,
        ..FakeOptions::default()
    });
    let tok = token(&fake).await;
    // Start early in a calendar second so all calls land in the same bucket.
    let ms = chrono::Utc::now().timestamp_subsec_millis();
    if ms > 500 {
        tokio::time::sleep(Duration::from_millis(u64::from(1010 - ms))).await;
    }
    let body = create_body("u1", "x");
    for _ in 0..3 {
        assert_eq!(create(&fake, &tok, &body).await["errcode"], 0);
    }
    let rejected = create(&fake, &tok, &body).await;
    assert_eq!(rejected["errcode"], 88);
    assert_eq!(rejected["sub_code"], "90018");
    assert_eq!(fake.qps_rejections(), 1);
    // Calls with a bad token do not count.
    assert_eq!(create(&fake, "bad", &body).await["sub_code"], "40014");
    assert_eq!(fake.qps_rejections(), 1);
    assert_eq!(fake.reports().len(), 3);
}

#[tokio::test]
async fn faults_are_consumed_fifo() {
    let fake = FakeDingTalk::new(FakeOptions::default());
    let tok = token(&fake).await;
    let body = create_body("u1", "x");
    fake.push_create_fault(Fault::Errcode(-1));
    fake.push_create_fault(Fault::Wrapped("60011".to_owned()));
    fake.push_create_fault(Fault::Http(502));
    fake.push_create_fault(Fault::IpBan);
    fake.push_create_fault(Fault::NonJson);
    fake.push_create_fault(Fault::CommitThenHang(Duration::from_millis(10)));

    let first = create(&fake, &tok, &body).await;
    assert_eq!(first["errcode"], -1);
    assert_eq!(first["errmsg"], "系统繁忙");
    let second = create(&fake, &tok, &body).await;
    assert_eq!(second["errcode"], 88);
    assert_eq!(second["sub_code"], "60011");
    let uri = format!("/topapi/report/create?access_token={tok}");
    let (status, _) = call(&fake, "POST", &uri, &body).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let ban = create(&fake, &tok, &body).await;
    assert_eq!(ban["status"], 1111);
    let html = create(&fake, &tok, &body).await;
    assert!(html.as_str().expect("text").contains("<html>"));
    assert!(fake.reports().is_empty());
    let hung = create(&fake, &tok, &body).await;
    assert_eq!(hung["errcode"], 0);
    assert_eq!(fake.reports().len(), 1);
    assert_eq!(create(&fake, &tok, &body).await["errcode"], 0);
    assert_eq!(fake.create_calls(), 7);

    fake.push_gettoken_fault(Fault::Errcode(-1));
    fake.push_gettoken_fault(Fault::Wrapped("90018".to_owned()));
    let (_, t1) = call(&fake, "GET", "/gettoken?appkey=a&appsecret=b", "").await;
    assert_eq!(t1["errcode"], -1);
    let (_, t2) = call(&fake, "GET", "/gettoken?appkey=a&appsecret=b", "").await;
    assert_eq!(t2["sub_code"], "90018");
    assert_eq!(fake.qps_rejections(), 1);
    assert_eq!(token(&fake).await, tok);
}

#[tokio::test]
async fn getbyname_known_and_unknown() {
    let mut template = FakeTemplate::daily_report();
    template.name = "周报".to_owned();
    template.id = "weekly".to_owned();
    template.default_received_convs = vec![("cid1".to_owned(), "研发群".to_owned())];
    let fake = FakeDingTalk::new(FakeOptions {
        templates: vec![FakeTemplate::daily_report(), template],
        ..FakeOptions::default()
    });
    let tok = token(&fake).await;
    let uri = format!("/topapi/report/template/getbyname?access_token={tok}");
    let (_, daily) = call(
        &fake,
        "POST",
        &uri,
        r#"{"template_name":"日报","userid":"u1"}"#,
    )
    .await;
    assert_eq!(daily["errcode"], 0, "{daily}");
    let result = &daily["result"];
    assert_eq!(result["id"], DAILY_REPORT_TEMPLATE_ID);
    assert_eq!(result["userid"], "u1");
    assert_eq!(result["fields"][0]["field_name"], "今日完成工作");
    assert_eq!(result["fields"][2]["sort"], 2);
    assert_eq!(result["default_receivers"][0]["userid"], "lead01");
    assert!(result.get("default_received_convs").is_none());

    let request = Request::builder()
        .method("POST")
        .uri(&uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("template_name=%E5%91%A8%E6%8A%A5&userid=u1"))
        .expect("request");
    let response = fake.router().oneshot(request).await.expect("infallible");
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let weekly: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(weekly["result"]["id"], "weekly", "{weekly}");
    assert_eq!(
        weekly["result"]["default_received_convs"][0]["conversation_id"],
        "cid1"
    );
    assert!(
        weekly["result"]["default_received_convs"][0]
            .get("cid")
            .is_none()
    );

    let (_, unknown) = call(
        &fake,
        "POST",
        &uri,
        r#"{"template_name":"月报","userid":"u1"}"#,
    )
    .await;
    assert_eq!(unknown["errcode"], 400002);
    assert_eq!(unknown["errmsg"], "模板不存在");
    assert_eq!(fake.getbyname_calls(), 3);

    let (_, no_api) = call(&fake, "POST", "/topapi/report/nothing", "{}").await;
    assert_eq!(no_api["errcode"], 22);
}

#[tokio::test]
async fn list_filters_and_pages() {
    let mut weekly = FakeTemplate::daily_report();
    weekly.name = "周报".to_owned();
    weekly.id = "weekly".to_owned();
    let fake = FakeDingTalk::new(FakeOptions {
        templates: vec![FakeTemplate::daily_report(), weekly],
        ..FakeOptions::default()
    });
    let tok = token(&fake).await;
    let start = chrono::Utc::now().timestamp_millis() - 1;
    for i in 0..5 {
        let userid = if i < 3 { "u1" } else { "u2" };
        let answer = create(&fake, &tok, &create_body(userid, &format!("第{i}条"))).await;
        assert_eq!(answer["errcode"], 0);
    }
    let mut weekly_body: Value = serde_json::from_str(&create_body("u1", "周")).expect("json");
    weekly_body["create_report_param"]["template_id"] = json!("weekly");
    assert_eq!(
        create(&fake, &tok, &weekly_body.to_string()).await["errcode"],
        0
    );
    let end = chrono::Utc::now().timestamp_millis() + 1;

    let uri = format!("/topapi/report/list?access_token={tok}");
    let query = |extra: Value| {
        let mut body = json!({"start_time": start, "end_time": end, "cursor": 0, "size": 2});
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        body.to_string()
    };
    let (_, page1) = call(
        &fake,
        "POST",
        &uri,
        &query(json!({"userid": "u1", "template_name": "日报"})),
    )
    .await;
    assert_eq!(page1["errcode"], 0, "{page1}");
    assert_eq!(page1["result"]["size"], 2);
    assert_eq!(page1["result"]["has_more"], true);
    // The cursor is opaque: a large number, not the offset 2.
    let cursor = page1["result"]["next_cursor"].as_i64().expect("a cursor");
    assert!(cursor > 1_000_000, "{page1}");
    let first = &page1["result"]["data_list"][0];
    assert_eq!(first["creator_id"], "u1");
    assert_eq!(first["template_name"], "日报");
    assert_eq!(first["contents"][0]["value"], "第0条");
    assert_eq!(first["contents"][0]["sort"], "0");

    let (_, page2) = call(
        &fake,
        "POST",
        &uri,
        &query(json!({"userid": "u1", "template_name": "日报", "cursor": cursor})),
    )
    .await;
    assert_eq!(page2["result"]["size"], 1);
    assert_eq!(page2["result"]["has_more"], false);
    // Like the doc's example, the last page still carries a cursor, and it did not grow.
    let last = page2["result"]["next_cursor"].as_i64().expect("a cursor");
    assert!(last < cursor, "{page2}");
    assert_eq!(
        page2["result"]["data_list"][0]["contents"][0]["value"],
        "第2条"
    );

    let (_, weekly_only) = call(
        &fake,
        "POST",
        &uri,
        &query(json!({"template_name": "周报"})),
    )
    .await;
    assert_eq!(weekly_only["result"]["size"], 1);
    let (_, u2) = call(
        &fake,
        "POST",
        &uri,
        &query(json!({"userid": "u2", "size": 20})),
    )
    .await;
    assert_eq!(u2["result"]["size"], 2);

    let (_, too_big) = call(&fake, "POST", &uri, &query(json!({"size": 21}))).await;
    assert_eq!(too_big["errcode"], 400002);
    let (_, no_start) = call(&fake, "POST", &uri, r#"{"end_time":1,"size":5}"#).await;
    assert_eq!(no_start["errcode"], 40035);
    let (_, before) = call(
        &fake,
        "POST",
        &uri,
        &json!({"start_time": start - 86_400_000, "end_time": start - 10, "size": 20}).to_string(),
    )
    .await;
    assert_eq!(before["result"]["size"], 0);
    let (_, unknown_cursor) = call(&fake, "POST", &uri, &query(json!({"cursor": 2}))).await;
    assert_eq!(unknown_cursor["errcode"], 400002, "{unknown_cursor}");
    let (_, half_year) = call(
        &fake,
        "POST",
        &uri,
        &json!({"start_time": end - MAX_LIST_WINDOW_MS, "end_time": end, "cursor": 0, "size": 20})
            .to_string(),
    )
    .await;
    assert_eq!(half_year["errcode"], 0, "{half_year}");
    let (_, too_long) = call(
        &fake,
        "POST",
        &uri,
        &json!({"start_time": end - MAX_LIST_WINDOW_MS - 1, "end_time": end, "cursor": 0, "size": 20})
            .to_string(),
    )
    .await;
    assert_eq!(too_long["errcode"], 400002, "{too_long}");
    assert!(too_long["errmsg"].as_str().unwrap().contains("180"));
    assert_eq!(fake.list_calls(), 10);
}

#[tokio::test]
async fn commit_faults_create_the_report_and_then_misanswer() {
    let fake = FakeDingTalk::new(FakeOptions::default());
    let tok = token(&fake).await;
    fake.push_create_fault(Fault::CommitThenHttp(502));
    fake.push_create_fault(Fault::CommitThenResultObject);
    fake.push_create_fault(Fault::CommitWithoutResult);
    let uri = format!("/topapi/report/create?access_token={tok}");
    let (status, gateway) = call(&fake, "POST", &uri, &create_body("u1", "a")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(gateway.is_string(), "a gateway page, not JSON: {gateway}");
    assert_eq!(fake.reports().len(), 1, "committed before the 502");
    let (_, object) = call(&fake, "POST", &uri, &create_body("u1", "b")).await;
    assert_eq!(object["errcode"], 0);
    assert_eq!(
        object["result"]["report_id"],
        fake.reports()[1].report_id.as_str()
    );
    let (_, bare) = call(&fake, "POST", &uri, &create_body("u1", "c")).await;
    assert_eq!(bare["errcode"], 0);
    assert!(bare.get("result").is_none(), "{bare}");
    assert_eq!(fake.reports().len(), 3);
}

#[tokio::test]
async fn listed_text_can_come_back_normalised() {
    let fake = FakeDingTalk::new(FakeOptions {
        normalise_listed_text: true,
        ..FakeOptions::default()
    });
    let tok = token(&fake).await;
    let sent = "**a & b**  \nx < y > z\n\n\n\nend  ";
    assert_eq!(
        create(&fake, &tok, &create_body("u1", sent)).await["errcode"],
        0
    );
    let (_, listed) = call(
        &fake,
        "POST",
        &format!("/topapi/report/list?access_token={tok}"),
        &json!({"start_time": chrono::Utc::now().timestamp_millis() - 60_000,
            "end_time": chrono::Utc::now().timestamp_millis() + 1,
            "cursor": 0, "size": 20, "userid": "u1"})
        .to_string(),
    )
    .await;
    assert_eq!(
        listed["result"]["data_list"][0]["contents"][0]["value"],
        "**a &amp; b**\r\nx &lt; y &gt; z\r\n\r\nend"
    );
    // What was stored is unchanged.
    assert_eq!(fake.reports()[0].contents[0].content, sent);
}

#[tokio::test]
async fn latency_and_spawn_work() {
    let (fake, base_url) = FakeDingTalk::spawn(FakeOptions::default())
        .await
        .expect("spawn");
    assert!(base_url.starts_with("http://127.0.0.1:"));
    fake.set_latency(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let _ = token(&fake).await;
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(!format!("{:?}", fake.options()).contains("sandbox-app-secret"));
}

#[tokio::test]
async fn the_v1_token_endpoint_answers_like_api_dingtalk_com() {
    let fake = FakeDingTalk::new(FakeOptions::default());
    let (status, ok) = call(
        &fake,
        "POST",
        "/v1.0/oauth2/accessToken",
        r#"{"appKey":"sandbox-app-key","appSecret":"sandbox-app-secret"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ok["expireIn"], 7200);
    assert!(ok.get("errcode").is_none(), "{ok}");
    // The same token as gettoken gives, valid on topapi.
    assert_eq!(
        ok["accessToken"].as_str(),
        Some(token(&fake).await.as_str())
    );
    let (status, bad) = call(
        &fake,
        "POST",
        "/v1.0/oauth2/accessToken",
        r#"{"appKey":"sandbox-app-key","appSecret":"wrong"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(bad["code"], "invalidClientIdOrSecret");
    assert!(bad["requestid"].is_string());
    let (status, missing) = call(&fake, "POST", "/v1.0/oauth2/accessToken", "{}").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(missing["code"], "MissingParameter");
    assert_eq!(fake.gettoken_calls(), 4);
}

#[tokio::test]
async fn a_used_up_monthly_quota_answers_90020_to_metered_calls_only() {
    // Arrange: a quota of two metered calls.
    let fake = FakeDingTalk::new(FakeOptions::default());
    fake.set_monthly_quota(Some(2));
    let tok = token(&fake).await;
    let getbyname = format!("/topapi/report/template/getbyname?access_token={tok}");
    let list = format!("/topapi/report/list?access_token={tok}");
    let list_body = json!({"start_time": 0, "end_time": 1, "cursor": 0, "size": 10}).to_string();

    // Act: two calls within it, then one of each kind beyond it.
    let within = [
        create(&fake, &tok, &create_body("u1", "一")).await,
        call(
            &fake,
            "POST",
            &getbyname,
            r#"{"template_name":"日报","userid":"u1"}"#,
        )
        .await
        .1,
    ];
    let beyond = [
        create(&fake, &tok, &create_body("u1", "二")).await,
        call(
            &fake,
            "POST",
            &getbyname,
            r#"{"template_name":"日报","userid":"u1"}"#,
        )
        .await
        .1,
        call(&fake, "POST", &list, &list_body).await.1,
    ];

    // Assert: 88 with sub_code 90020 beyond the quota; gettoken is exempt; nothing created.
    for answer in &within {
        assert_eq!(answer["errcode"], 0, "{answer}");
    }
    for answer in &beyond {
        assert_eq!(answer["errcode"], 88, "{answer}");
        assert_eq!(answer["sub_code"], "90020", "{answer}");
        assert!(answer["request_id"].is_string(), "{answer}");
    }
    assert_eq!(token(&fake).await, tok);
    assert_eq!(fake.reports().len(), 1);
    // A new month (or an upgrade) starts the count again.
    fake.set_monthly_quota(Some(1));
    assert_eq!(
        create(&fake, &tok, &create_body("u1", "三")).await["errcode"],
        0
    );
    fake.set_monthly_quota(None);
    assert_eq!(
        create(&fake, &tok, &create_body("u1", "四")).await["errcode"],
        0
    );
}
