//! The built-in field templates: what a route without `fields` writes into the standard 日报
//! fields (`今日完成工作`, `未完成工作`, `需协调工作`, see [`STANDARD_FIELDS`]).
//!
//! They are rendered with `trim_blocks` and `lstrip_blocks` on, so a `{% if %}` line leaves no
//! blank line behind (and a block tag at the end of a line eats its line break: use an inline
//! `{{ x if y }}` there). Text is bilingual (Chinese first, then English) because reports are read
//! by both. The DingTalk client is reported to eat leading `- ` list bullets and to mangle a
//! leading `>` quote, so lists use `• ` and nothing starts with `>`. Each line break is sent as
//! a markdown hard break (see `hard_breaks` in the parent module), so plain `\n` is written
//! here.
//!
//! [`STANDARD_FIELDS`]: crate::config::STANDARD_FIELDS

/// `pipeline / job`, or just one of them when they are the same or one is missing.
macro_rules! run_name {
    () => {
        "{{ pipeline }}{% if job and job != pipeline %} / {{ job }}{% endif %}"
    };
}

/// `今日完成工作` for a job_status: what ran and how it ended, one fact per line.
const JOB_DONE: &str = concat!(
    "{{ status_icon }} **",
    run_name!(),
    "** {{ status_text }}{{ \" · \" ~ source if source }}\n",
    "{% if project %}\n项目 Project: {{ project }}\n{% endif %}\n",
    "{% if branch %}\n分支 Branch: {{ branch }}{{ \" @ \" ~ commit_short if commit_short }}\n",
    "{% elif commit_short %}\n提交 Commit: {{ commit_short }}\n{% endif %}\n",
    "{% if commit_title %}\n说明 Message: {{ commit_title }}\n{% endif %}\n",
    "{% if actor or actor_email %}\n触发 By: {{ actor or actor_email }}\n{% endif %}\n",
    "{% if duration_human %}\n耗时 Duration: {{ duration_human }}\n{% endif %}\n",
    "{% if summary %}\n摘要 Summary: {{ summary }}\n{% endif %}\n",
    "{% if url %}\n链接 Link: {{ url }}\n{% endif %}\n",
);

/// `未完成工作` for a job_status: only a failed or cancelled run leaves something to do.
const JOB_TODO: &str = concat!(
    "{% if status == \"failure\" %}\n",
    "❌ ",
    run_name!(),
    " 失败，待修复 needs a fix{% if url %}: {{ url }}{% endif %}\n",
    "{% elif status == \"cancelled\" %}\n",
    "🚫 ",
    run_name!(),
    " 已取消，待重新运行 needs a re-run{% if url %}: {{ url }}{% endif %}\n",
    "{% endif %}\n",
);

/// `需协调工作` for a job_status: a failure asks the person who triggered it to look.
const JOB_HELP: &str = concat!(
    "{% if status == \"failure\" %}\n",
    "{% set who = actor or actor_userid or actor_email %}\n",
    "请{% if who %} @{{ who }} {% endif %}查看 please look into ",
    run_name!(),
    "{% if branch %} ({{ branch }}){% endif %}\n",
    "{% endif %}\n",
);

/// `今日完成工作` for a standup: what was done.
const STANDUP_DONE: &str = "{{ done | bullets }}";

/// `未完成工作` for a standup: what is planned.
const STANDUP_TODO: &str = "{{ todo | bullets }}";

/// `需协调工作` for a standup: blockers, then the free-text notes.
const STANDUP_HELP: &str = concat!(
    "{{ blockers | bullets }}\n",
    "{% if notes %}\n{% if blockers %}\n\n{% endif %}\n备注 Notes: {{ notes }}\n{% endif %}\n",
);

/// Built-in templates for job_status events, as (field, template) in the standard order.
pub(super) const JOB_STATUS: [(&str, &str); 3] = [
    ("今日完成工作", JOB_DONE),
    ("未完成工作", JOB_TODO),
    ("需协调工作", JOB_HELP),
];

/// Built-in templates for standup events, as (field, template) in the standard order.
pub(super) const STANDUP: [(&str, &str); 3] = [
    ("今日完成工作", STANDUP_DONE),
    ("未完成工作", STANDUP_TODO),
    ("需协调工作", STANDUP_HELP),
];

/// `今日完成工作` for a digest: the period's counts, one line per pipeline (failures first), the
/// summary of the pipelines not shown, then what each person reported done.
const DIGEST_DONE: &str = concat!(
    "📊 **CI 汇总 Digest {{ date }}**{{ \" · \" ~ group if group_by == \"project\" and group }}\n",
    "{% if runs %}\n",
    "{{ runs }} 次运行 runs · ✅ {{ passed }} · ❌ {{ failed }} · 🚫 {{ cancelled }}{{ \" · ❔ \" ~ other if other }}\n",
    "{% elif not standups %}\n",
    "本期没有 CI 运行 No CI runs in this period ({{ period_start }} – {{ period_end }})\n",
    "{% endif %}\n",
    "{% for p in pipelines %}\n",
    "{{ p.status_icon }} {{ p.project ~ \" › \" if p.project and group_by != \"project\" }}{{ p.name }}",
    "{{ \" (\" ~ p.branch ~ \")\" if p.branch }} {{ p.status_text }}",
    "{{ \" · \" ~ p.duration_human if p.duration_human }}",
    "{{ \" · \" ~ p.runs ~ \" 次 runs\" if p.runs > 1 }}",
    "{{ \" · \" if p.url }}{{ p.url }}\n",
    "{% endfor %}\n",
    "{% if more_text %}\n{{ more_text }}\n{% endif %}\n",
    "{% for s in standups if s.done %}\n",
    "\n{{ s.user or s.userid }}:\n{{ s.done | bullets }}\n",
    "{% endfor %}\n",
);

/// `未完成工作` for a digest: pipelines whose latest result failed or was cancelled, then what
/// each person plans.
const DIGEST_TODO: &str = concat!(
    "{% for p in failures %}\n",
    "{{ p.status_icon }} {{ p.project ~ \" › \" if p.project and group_by != \"project\" }}{{ p.name }}",
    "{{ \" (\" ~ p.branch ~ \")\" if p.branch }} 待处理 needs attention{{ \": \" if p.url }}{{ p.url }}\n",
    "{% endfor %}\n",
    "{% for s in standups if s.todo %}\n",
    "\n{{ s.user or s.userid }}:\n{{ s.todo | bullets }}\n",
    "{% endfor %}\n",
);

/// `需协调工作` for a digest: who should look at a failure, then blockers and notes.
const DIGEST_HELP: &str = concat!(
    "{% for p in failures if p.status == \"failure\" and p.actor %}\n",
    "请 @{{ p.actor }} 查看 please look into {{ p.name }}{{ \" (\" ~ p.branch ~ \")\" if p.branch }}\n",
    "{% endfor %}\n",
    "{% for s in standups if s.blockers or s.notes %}\n",
    "\n{{ s.user or s.userid }}:\n{{ s.blockers | bullets }}\n",
    "{% if s.notes %}\n备注 Notes: {{ s.notes }}\n{% endif %}\n",
    "{% endfor %}\n",
);

/// Built-in templates for digests, as (field, template) in the standard order.
pub(super) const DIGEST: [(&str, &str); 3] = [
    ("今日完成工作", DIGEST_DONE),
    ("未完成工作", DIGEST_TODO),
    ("需协调工作", DIGEST_HELP),
];
