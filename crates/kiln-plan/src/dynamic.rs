//! Fan-out over a list a step writes at run time (`for_each: "{{steps.list.shards}}"`).
//!
//! The plan holds such a step once, as a template: its `{{item}}` references are left in
//! place, and [`PlannedStep::for_each`] names the output holding the list. When that output
//! exists, the engine reads the list and asks [`instantiate`] for one planned step per item,
//! with ids `name[0]`, `name[1]`... in list order, and points the steps reading the template's
//! outputs at the instances ([`point_at_instances`]). The record keeps the items, so that a
//! replay, `kiln show` or `kiln explain` rebuild the same steps with [`Plan::expand`].

use serde_json::Value as Json;

use crate::compile::MAX_FAN_OUT;
use crate::{FanOutInstance, InputSource, Plan, PlannedStep, StepId};
use kiln_spec::Value;
use kiln_spec::template::{self, Segment, TemplateRef};

/// The longest item text used in an instance's label (`shard_work[part-003.csv]`).
const MAX_LABEL: usize = 40;

/// Checks a list a step wrote for a fan-out: a JSON array of at most [`MAX_FAN_OUT`] items,
/// each a string, number or boolean, or an object of such values (and lists of them).
pub fn check_items(list: &Json) -> Result<&[Json], String> {
    let Json::Array(items) = list else {
        return Err(format!("it holds {}, not a JSON list", json_kind(list)));
    };
    if items.len() > MAX_FAN_OUT {
        return Err(format!(
            "it lists {} items; the most a step fans out to is {MAX_FAN_OUT}",
            items.len()
        ));
    }
    for (k, item) in items.iter().enumerate() {
        let ok = match item {
            Json::Object(fields) => fields.values().all(is_plain),
            other => is_scalar(other),
        };
        if !ok {
            return Err(format!(
                "item {k} is {}; items are strings, numbers, booleans, or objects of those",
                json_kind(item)
            ));
        }
    }
    Ok(items)
}

fn is_scalar(v: &Json) -> bool {
    matches!(v, Json::Bool(_) | Json::Number(_) | Json::String(_))
}

fn is_plain(v: &Json) -> bool {
    match v {
        Json::Array(items) => items.iter().all(is_scalar),
        other => is_scalar(other),
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

/// A JSON value as a param value: numbers, strings, booleans and lists of them.
pub(crate) fn to_value(v: &Json) -> Option<Value> {
    Some(match v {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64()?),
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::List(items.iter().map(to_value).collect::<Option<_>>()?),
        Json::Null | Json::Object(_) => return None,
    })
}

/// How an item (or a field) reads inside a string: as `{{item}}` does in a written list.
pub(crate) fn text_of(v: &Json) -> String {
    match to_value(v) {
        Some(value) => value.to_template_string(),
        None => v.to_string(),
    }
}

/// What `reference` names in item `k`, or why it names nothing.
fn lookup<'i>(reference: &TemplateRef, k: usize, item: &'i Json) -> Result<&'i Json, String> {
    match reference {
        TemplateRef::Item => Ok(item),
        TemplateRef::ItemField(field) => match item {
            Json::Object(fields) => fields.get(field).ok_or_else(|| {
                let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
                names.sort_unstable();
                format!(
                    "item {k} has no field `{field}` (its fields: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            }),
            other => Err(format!(
                "`{{{{item.{field}}}}}` reads a field, but item {k} is {} (`{}`), not an object",
                json_kind(other),
                text_of(other)
            )),
        },
        _ => unreachable!("only item references are filled"),
    }
}

/// What a template is filled with: `Ok(None)` leaves it as written.
pub(crate) type Resolve<'r> = dyn Fn(&TemplateRef) -> Result<Option<Json>, String> + 'r;

/// Fills the templates `resolve` knows in one string; the others stay.
fn fill_text(text: &str, resolve: &Resolve) -> Result<String, String> {
    let Ok(segments) = template::parse(text) else {
        return Ok(text.to_owned());
    };
    let mut out = String::new();
    let mut filled = false;
    for segment in segments {
        match segment {
            Segment::Text(t) => out.push_str(&t),
            Segment::Ref { target, .. } => match resolve(&target)? {
                Some(found) => {
                    out.push_str(&text_of(&found));
                    filled = true;
                }
                None => out.push_str(&format!("{{{{{target}}}}}")),
            },
        }
    }
    // A string with nothing filled stays as written.
    Ok(if filled { out } else { text.to_owned() })
}

fn is_item(target: &TemplateRef) -> bool {
    matches!(target, TemplateRef::Item | TemplateRef::ItemField(_))
}

/// Fills templates everywhere in a serialised planned step. Under `params` (the step's
/// `with:` values, and the same in its cache key) a string that is one reference takes the
/// referenced value's type, as `{{item}}` does with a written list.
pub(crate) fn fill(json: &mut Json, resolve: &Resolve, typed: bool) -> Result<(), String> {
    match json {
        Json::String(s) => {
            if typed
                && let Some(target) = template::whole_ref(s)
                && let Some(found) = resolve(&target)?
            {
                *json = match to_value(&found) {
                    Some(_) => found,
                    None => Json::String(found.to_string()),
                };
            } else {
                *s = fill_text(s, resolve)?;
            }
        }
        Json::Array(items) => {
            for v in items {
                fill(v, resolve, typed)?;
            }
        }
        Json::Object(fields) => {
            for (key, v) in fields.iter_mut() {
                fill(v, resolve, typed || key == "params")?;
            }
        }
        Json::Null | Json::Bool(_) | Json::Number(_) => {}
    }
    Ok(())
}

/// A nested fan-out's items: for each item, in order, one per element of its list `field`,
/// the item with `field` set to that element. An item without the field, or whose field is
/// not a list, is an error, and so is more than [`MAX_FAN_OUT`] in all.
pub fn flatten(items: &[Json], field: &str) -> Result<Vec<Json>, String> {
    let mut flat = Vec::new();
    for (k, item) in items.iter().enumerate() {
        let Json::Object(fields) = item else {
            return Err(format!(
                "`nested: {field}` reads a field of each item, but item {k} is {} (`{}`), not an object",
                json_kind(item),
                text_of(item)
            ));
        };
        let inner = match fields.get(field) {
            Some(Json::Array(inner)) => inner,
            Some(other) => {
                return Err(format!(
                    "`nested: {field}`: item {k}'s `{field}` is {}, not a list",
                    json_kind(other)
                ));
            }
            None => {
                return Err(format!(
                    "`nested: {field}`: item {k} has no field `{field}`"
                ));
            }
        };
        for element in inner {
            let mut one = fields.clone();
            one.insert(field.to_owned(), element.clone());
            flat.push(Json::Object(one));
        }
        if flat.len() > MAX_FAN_OUT {
            return Err(format!(
                "`nested: {field}` makes more than {MAX_FAN_OUT} instances; the most a step fans out to is {MAX_FAN_OUT}"
            ));
        }
    }
    Ok(flat)
}

/// The planned steps for each item of `template`'s list, in list order.
///
/// `step` finds planned steps by id: a template that reads the output of another template
/// fanning out over the same list (paired, like `evaluate` with `train`) reads instance `k`
/// of it, which must exist.
pub fn instantiate<'p>(
    template: &PlannedStep,
    items: &[Json],
    step: impl Fn(&str) -> Option<&'p PlannedStep>,
) -> Result<Vec<PlannedStep>, String> {
    let Some(list) = &template.for_each else {
        return Err(format!(
            "step `{}` does not fan out over a step's output",
            template.id
        ));
    };
    let flat;
    let items = match &list.nested {
        Some(field) => {
            flat = flatten(items, field).map_err(|e| {
                format!(
                    "step `{}` fans out over `{}.{}`: {e}",
                    template.id, list.step, list.output
                )
            })?;
            flat.as_slice()
        }
        None => items,
    };
    let mut base = template.clone();
    base.for_each = None;
    let json = serde_json::to_value(&base).expect("planned steps serialise");
    let labels = labels(&template.step, items, list.nested.as_deref());
    let mut instances = Vec::with_capacity(items.len());
    for (k, item) in items.iter().enumerate() {
        let mut filled = json.clone();
        let resolve = |target: &TemplateRef| match is_item(target) {
            true => lookup(target, k, item).map(|found| Some(found.clone())),
            false => Ok(None),
        };
        fill(&mut filled, &resolve, false).map_err(|e| {
            format!(
                "step `{}` fans out over `{}.{}`: {e}",
                template.id, list.step, list.output
            )
        })?;
        let mut instance: PlannedStep = serde_json::from_value(filled)
            .map_err(|e| format!("step `{}`, item {k}: {e}", template.id))?;
        instance.id = instance_id(&template.id, k);
        instance.instance = Some(FanOutInstance {
            index: k,
            item: to_value(item).unwrap_or_else(|| Value::String(item.to_string())),
            label: labels[k].clone(),
        });
        // Paired: instance k of a template over the same list reads instance k.
        let mut paired = Vec::new();
        for source in instance.inputs.values_mut() {
            if let InputSource::Step { step: producer, .. } = source
                && let Some(other) = step(producer.as_str())
                && other.for_each.is_some()
            {
                let at = instance_id(producer, k);
                if step(at.as_str()).is_none() {
                    return Err(format!(
                        "step `{}` pairs with `{producer}`, which has no instance {k}: the two fan out over lists of different lengths",
                        template.id
                    ));
                }
                paired.push((producer.clone(), at.clone()));
                *producer = at;
            }
        }
        for (producer, at) in paired {
            instance.depends_on.retain(|d| {
                d == &at
                    || d.as_str()
                        .strip_prefix(producer.as_str())
                        .is_none_or(|rest| !is_index(rest))
            });
            if !instance.depends_on.contains(&at) {
                instance.depends_on.push(at);
            }
        }
        instance.depends_on.sort();
        instances.push(instance);
    }
    Ok(instances)
}

/// `[k]`.
fn is_index(rest: &str) -> bool {
    rest.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Instance `k` of a template: `name[k]`.
pub fn instance_id(template: &StepId, k: usize) -> StepId {
    StepId::new(format!("{template}[{k}]"))
}

/// How people read each instance: `name[ITEM]` where every item is a short, distinct plain
/// value; none (the id) otherwise.
fn labels(name: &str, items: &[Json], nested: Option<&str>) -> Vec<Option<String>> {
    let texts: Vec<Option<String>> = items
        .iter()
        .map(|item| {
            // An object reads as its `name` (or `id`) where it has one; in a nested fan-out,
            // with its inner element after it: `train[small/3]`.
            let text = match item {
                Json::Object(fields) => {
                    let named = fields.get("name").or_else(|| fields.get("id"))?;
                    if !is_scalar(named) {
                        return None;
                    }
                    match nested.and_then(|f| fields.get(f)) {
                        Some(inner) if is_scalar(inner) => {
                            format!("{}/{}", text_of(named), text_of(inner))
                        }
                        Some(_) => return None,
                        None => text_of(named),
                    }
                }
                Json::Array(_) => return None,
                other => text_of(other),
            };
            (!text.is_empty() && text.len() <= MAX_LABEL && !text.contains([']', '\n']))
                .then_some(text)
        })
        .collect();
    let distinct = {
        let mut seen = std::collections::HashSet::new();
        texts
            .iter()
            .all(|t| t.as_ref().is_some_and(|t| seen.insert(t)))
    };
    texts
        .into_iter()
        .map(|t| t.filter(|_| distinct).map(|t| format!("{name}[{t}]")))
        .collect()
}

/// Points a step that reads `template`'s outputs or waits for it at its instances: it waits
/// for every instance, and collects from them. A template over the same list that reads it
/// keeps reading the template until it is expanded itself ([`instantiate`]). Whether anything
/// changed.
pub fn point_at_instances(
    consumer: &mut PlannedStep,
    template: &PlannedStep,
    instances: &[StepId],
) -> bool {
    if !consumer.depends_on.contains(&template.id) {
        return false;
    }
    for source in consumer.inputs.values_mut() {
        if let InputSource::Collect {
            step,
            instances: at,
            ..
        } = source
            && *step == template.step
            && at.is_empty()
        {
            at.extend(instances.iter().cloned());
        }
    }
    let on = consumer.after_on.get(&template.id).copied();
    for id in instances {
        if !consumer.depends_on.contains(id) {
            consumer.depends_on.push(id.clone());
        }
        if let Some(on) = on {
            consumer.after_on.insert(id.clone(), on);
        }
    }
    consumer.depends_on.sort();
    true
}

impl Plan {
    /// Expands template step `id` with `items`, as the engine did in the run: the instances
    /// are put right after it, and the steps reading it point at them. The ids of the
    /// instances.
    pub fn expand(&mut self, id: &str, items: &[Json]) -> Result<Vec<StepId>, String> {
        let at = self
            .steps
            .iter()
            .position(|s| s.id == id)
            .ok_or_else(|| format!("the plan has no step `{id}`"))?;
        let template = self.steps[at].clone();
        let instances = instantiate(&template, items, |s| self.step(s))?;
        let ids: Vec<StepId> = instances.iter().map(|s| s.id.clone()).collect();
        for step in &mut self.steps {
            point_at_instances(step, &template, &ids);
        }
        self.steps.splice(at + 1..at + 1, instances);
        Ok(ids)
    }
}
