//! The outbound DingTalk API: client ([`DingTalkClient`]), token cache, wire model and the
//! error classifier. It knows DingTalk's protocol and quirks; it knows nothing of webhooks,
//! queues or routes.

mod client;
pub mod error;
mod ledger;
pub mod model;
mod ratelimit;
mod token;

pub use client::{Created, DingTalkClient, Reconciliation};
pub use error::{Disposition, Error};
pub use ledger::Ledger;
pub use model::{CreateReportParam, ReportContent, ResolvedTemplate, TemplateField};
pub use ratelimit::SharedLimit;

use crate::config::TemplateSettings;
use crate::mapping::ReportDraft;

/// Result of DingTalk calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// API names used in logs and metric labels.
pub mod api {
    /// `gettoken`
    pub const GETTOKEN: &str = "gettoken";
    /// `topapi/report/create`
    pub const REPORT_CREATE: &str = "report_create";
    /// `topapi/report/template/getbyname`
    pub const TEMPLATE_GETBYNAME: &str = "template_getbyname";
    /// `topapi/report/list`
    pub const REPORT_LIST: &str = "report_list";
}

/// The template of a route given by `id` + `fields`, which needs no lookup.
pub fn template_from_config(template: &TemplateSettings) -> Option<ResolvedTemplate> {
    let id = template.id.as_ref()?;
    let fields = template.fields.as_ref()?;
    Some(ResolvedTemplate {
        id: id.clone(),
        name: template.name.clone().unwrap_or_default(),
        fields: fields
            .iter()
            .map(|f| TemplateField {
                name: f.name.clone(),
                sort: f.sort,
                kind: f.kind,
            })
            .collect(),
    })
}

/// Checks that every field the draft fills is a text field of `template`.
pub fn check_fields<'a>(
    template: &ResolvedTemplate,
    fields: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    for field in fields {
        match template.fields.iter().find(|f| f.name == field) {
            None => {
                let names: Vec<&str> = template.fields.iter().map(|f| f.name.as_str()).collect();
                return Err(Error::Config(format!(
                    "field {field:?} is not a field of template {:?} (its fields: {})",
                    template.name,
                    names.join(", ")
                )));
            }
            Some(f) if f.kind != 1 => {
                return Err(Error::Config(format!(
                    "field {field:?} of template {:?} has type {}; only text fields (type 1) can be filled",
                    template.name, f.kind
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Builds the `create_report_param` for a draft and its resolved template.
pub fn create_param(draft: &ReportDraft, template: &ResolvedTemplate) -> Result<CreateReportParam> {
    check_fields(template, draft.contents.iter().map(|c| c.field.as_str()))?;
    let mut contents: Vec<ReportContent> = draft
        .contents
        .iter()
        .filter_map(|c| {
            let field = template.fields.iter().find(|f| f.name == c.field)?;
            Some(ReportContent {
                key: field.name.clone(),
                sort: field.sort,
                kind: 1,
                content_type: "markdown".to_owned(),
                content: c.content.clone(),
            })
        })
        .collect();
    contents.sort_by_key(|c| c.sort);
    Ok(CreateReportParam {
        template_id: template.id.clone(),
        userid: draft.author.clone(),
        dd_from: draft.dd_from.clone(),
        to_chat: draft.to_chat,
        to_userids: draft.to_userids.clone(),
        to_cids: draft.to_cids.clone(),
        contents,
    })
}
