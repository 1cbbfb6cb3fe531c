//! Campaigns: `POST /v1/campaigns` and `volley send`.

use std::collections::HashSet;

use super::{
    CampaignRequest, Context, Invalid, MAX_RECIPIENT_VARS, MAX_SHARED_VARS, Prepared,
    PreparedRecipient, check_list, check_tags, check_vars, compose_invalid, from_field, invalid,
    send_at, stored,
};
use crate::address::{Address, suppression_key};
use crate::compose::{Composer, JobSpec, merge, vars_to_bytes};
use crate::queue::{JobId, JobKind, NewJob};

/// Recipients checked between two looks at whether the submitter went away.
const CANCEL_CHECK_EVERY: usize = 1024;

/// The campaign's stored spec, once its template, sender and options are checked.
fn spec(req: &mut CampaignRequest, composer: &Composer) -> Result<JobSpec, Invalid> {
    let template = req
        .template
        .clone()
        .ok_or_else(|| invalid("template", "is required"))?;
    if !composer.templates().contains(&template) {
        return Err(invalid(
            "template",
            format!("unknown template {template:?}"),
        ));
    }
    let (from_name, from) = from_field(req.from.as_ref())?;
    let reply_to = req
        .reply_to
        .as_ref()
        .map(|r| r.parse("reply_to"))
        .transpose()?;
    check_tags(&req.tags)?;
    check_list(req.list.as_deref())?;
    check_vars(&req.vars, "vars", MAX_SHARED_VARS)?;
    Ok(JobSpec {
        kind: JobKind::Campaign,
        from: stored(from_name, &from),
        to: Vec::new(),
        cc: Vec::new(),
        reply_to: reply_to.map(|(n, a)| stored(n, &a)),
        subject: req.subject.take(),
        text: None,
        html: None,
        template: Some(template),
        vars: std::mem::take(&mut req.vars),
        headers: std::mem::take(&mut req.headers).into_iter().collect(),
        attachments: Vec::new(),
        tags: std::mem::take(&mut req.tags),
        list: req.list.take(),
        pool: req.pool.take().map(Into::into),
        raw: None,
    })
}

/// Validates a campaign (every recipient's address and variables against the template,
/// strict) and prepares it for the queue. A recipient listed twice (in the one
/// normalisation of the suppression list) is sent once: the first entry wins.
pub fn prepare_campaign(
    mut req: CampaignRequest,
    composer: &Composer,
    idempotency: Option<(String, [u8; 32])>,
    ctx: &Context,
) -> Result<Prepared, Invalid> {
    super::check_pool(req.pool.as_deref(), ctx)?;
    let spec = spec(&mut req, composer)?;
    let template = spec.template.clone().unwrap_or_default();
    if req.recipients.is_empty() {
        return Err(invalid("recipients", "at least one recipient is required"));
    }
    if req.recipients.len() > ctx.max_recipients {
        return Err(invalid(
            "recipients",
            format!(
                "{} recipients; a campaign takes at most {} (split it)",
                req.recipients.len(),
                ctx.max_recipients
            ),
        ));
    }
    let send_at = send_at(req.send_at.as_ref(), ctx.now)?;
    let id = JobId::new(ctx.now);
    let requested = req.recipients.len();
    let mut recipients = Vec::with_capacity(requested);
    let mut seen = HashSet::with_capacity(requested);
    for (i, r) in req.recipients.into_iter().enumerate() {
        if i % CANCEL_CHECK_EVERY == 0 {
            ctx.check_cancelled()?;
        }
        let field = format!("recipients[{i}].to");
        let address = Address::parse(r.to.trim()).map_err(|e| invalid(&field, e))?;
        let vars = r.vars().map_err(|e| {
            invalid(
                format!("recipients[{i}].vars"),
                format!("must be an object of variables: {e}"),
            )
        })?;
        check_vars(&vars, &format!("recipients[{i}].vars"), MAX_RECIPIENT_VARS)?;
        if i == 0 {
            // One full build catches header and size problems shared by all.
            composer
                .compose(&id.to_string(), &spec, &address, &vars)
                .map_err(|e| compose_invalid(e, Some(i)))?;
        } else {
            let merged = merge(&spec.vars, &vars);
            composer
                .templates()
                .check(&template, &merged)
                .map_err(|e| invalid(format!("recipients[{i}].vars"), e))?;
        }
        if seen.insert(suppression_key(address.as_str())) {
            recipients.push(PreparedRecipient {
                to: address.as_str().to_owned(),
                vars: vars_to_bytes(&vars),
            });
        }
    }
    Ok(Prepared {
        job: NewJob {
            id,
            kind: JobKind::Campaign,
            payload: spec.to_payload(),
            send_at,
            idempotency,
        },
        recipients,
        requested,
    })
}
