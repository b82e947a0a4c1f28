//! Wire types of the DingTalk legacy API (oapi): report/create, template/getbyname,
//! report/list and gettoken, with lenient parsing where DingTalk is known to vary.

use serde::{Deserialize, Deserializer, Serialize};

/// The body of `topapi/report/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateReportRequest {
    /// The report.
    pub create_report_param: CreateReportParam,
}

/// `create_report_param`: what `render` prints and report/create receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateReportParam {
    /// Template id (from getbyname `result.id`).
    pub template_id: String,
    /// Author userid.
    pub userid: String,
    /// Source tag.
    pub dd_from: String,
    /// Also send a chat message to receivers.
    pub to_chat: bool,
    /// Receiver userids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_userids: Vec<String>,
    /// Receiver group ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_cids: Vec<String>,
    /// One item per filled field.
    pub contents: Vec<ReportContent>,
}

/// One field of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportContent {
    /// The field title.
    pub key: String,
    /// The field's sequence id in the template.
    pub sort: i64,
    /// Field type; always 1 (text).
    #[serde(rename = "type")]
    pub kind: i64,
    /// Always `markdown`.
    pub content_type: String,
    /// The text, at most 1000 characters.
    pub content: String,
}

/// A template as resolved by getbyname (or given by id in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedTemplate {
    /// Template id.
    pub id: String,
    /// Template name.
    pub name: String,
    /// Its fields.
    pub fields: Vec<TemplateField>,
}

/// One field of a resolved template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateField {
    /// `field_name`.
    #[serde(rename = "field_name")]
    pub name: String,
    /// `sort`.
    #[serde(deserialize_with = "lenient_i64")]
    pub sort: i64,
    /// `type` (1 = text).
    #[serde(
        rename = "type",
        deserialize_with = "lenient_i64",
        default = "text_kind"
    )]
    pub kind: i64,
}

fn text_kind() -> i64 {
    1
}

/// `result` of getbyname (only what the relay uses).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct GetByNameResult {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) fields: Vec<TemplateField>,
}

/// The gettoken answer's token fields.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TokenAnswer {
    pub(crate) access_token: String,
    #[serde(default = "default_expires_in", deserialize_with = "lenient_i64")]
    pub(crate) expires_in: i64,
}

/// The answer of `POST /v1.0/oauth2/accessToken`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct V1TokenAnswer {
    pub(crate) access_token: String,
    #[serde(default = "default_expires_in", deserialize_with = "lenient_i64")]
    pub(crate) expire_in: i64,
}

fn default_expires_in() -> i64 {
    7200
}

/// One report in a report/list page.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedReport {
    /// Report id.
    #[serde(default)]
    pub report_id: String,
    /// Template name.
    #[serde(default)]
    pub template_name: String,
    /// Author userid.
    #[serde(default)]
    pub creator_id: String,
    /// Creation time in ms.
    #[serde(default, deserialize_with = "lenient_i64_default")]
    pub create_time: i64,
    /// Contents.
    #[serde(default)]
    pub contents: Vec<ListedContent>,
}

/// A content of a listed report.
#[derive(Debug, Clone, Deserialize)]
pub struct ListedContent {
    /// Field title.
    #[serde(default)]
    pub key: String,
    /// Text.
    #[serde(default)]
    pub value: String,
}

/// `result` of report/list.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ListResult {
    #[serde(default)]
    pub(crate) data_list: Vec<ListedReport>,
    #[serde(default)]
    pub(crate) has_more: bool,
    /// Opaque; absent (or not a number) means there is no next page.
    #[serde(default, deserialize_with = "lenient_i64_option")]
    pub(crate) next_cursor: Option<i64>,
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    super::error::lenient_code(&value)
        .ok_or_else(|| serde::de::Error::custom(format!("expected an integer, got {value}")))
}

fn lenient_i64_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(super::error::lenient_code(&value))
}

fn lenient_i64_default<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(super::error::lenient_code(&value).unwrap_or_default())
}
