//! `when:` conditions: CEL expressions, checked for the names they use.

use std::collections::BTreeMap;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::{Context, Program};
use kiln_spec::Value;

/// The names a condition uses.
#[derive(Debug, Default)]
pub struct WhenRefs {
    /// `params.NAME`.
    pub params: Vec<String>,
    /// `steps.STEP.OUTPUT`.
    pub steps: Vec<(String, String)>,
    /// Whether `item` appears.
    pub uses_item: bool,
    /// Problems with names: a root that is not `params`, `steps` or `item`, or a path cut short.
    pub problems: Vec<String>,
}

/// Parses a condition and lists what it refers to.
pub fn analyze(source: &str) -> Result<(Program, WhenRefs), String> {
    let program = Program::compile(source).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("").trim().to_owned();
        format!("`when` is not a valid CEL expression: {first}")
    })?;
    let mut refs = WhenRefs::default();
    walk(program.expression(), &mut Vec::new(), &mut refs);
    Ok((program, refs))
}

/// Evaluates a condition that only reads params; `None` when it cannot be decided statically.
pub fn evaluate_static(
    program: &Program,
    params: &BTreeMap<String, Value>,
) -> Result<Option<bool>, String> {
    let mut context = Context::default();
    let value = cel::to_value(params).map_err(|e| format!("cannot pass params to CEL: {e}"))?;
    context.add_variable_from_value("params", value);
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(Some(b)),
        Ok(other) => Err(format!(
            "`when` must give a bool, but gives {:?} with these params",
            other.type_of()
        )),
        Err(e) => Err(format!("`when` fails with these params: {e}")),
    }
}

fn qualified(expr: &IdedExpr) -> Option<Vec<&str>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(select) if !select.test => {
            let mut path = qualified(&select.operand)?;
            path.push(select.field.as_str());
            Some(path)
        }
        _ => None,
    }
}

fn record(path: &[&str], locals: &[String], refs: &mut WhenRefs) {
    let root = path[0];
    if locals.iter().any(|l| l == root) {
        return;
    }
    match root {
        "params" => match path.get(1) {
            Some(name) => refs.params.push((*name).to_owned()),
            None => refs
                .problems
                .push("`params` needs a name: `params.NAME`".into()),
        },
        "steps" => match (path.get(1), path.get(2)) {
            (Some(step), Some(output)) => {
                refs.steps.push(((*step).to_owned(), (*output).to_owned()))
            }
            _ => refs
                .problems
                .push("`steps` needs a step and an output: `steps.STEP.OUTPUT`".into()),
        },
        "item" => refs.uses_item = true,
        other => refs.problems.push(format!(
            "unknown name `{other}`: conditions read `params.NAME`, `steps.STEP.OUTPUT` and `item`"
        )),
    }
}

fn walk(expr: &IdedExpr, locals: &mut Vec<String>, refs: &mut WhenRefs) {
    if let Some(path) = qualified(expr) {
        record(&path, locals, refs);
        return;
    }
    match &expr.expr {
        Expr::Select(select) => walk(&select.operand, locals, refs),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, locals, refs);
            }
            for arg in &call.args {
                walk(arg, locals, refs);
            }
        }
        Expr::List(list) => {
            for element in &list.elements {
                walk(element, locals, refs);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                walk_entry(&entry.expr, locals, refs);
            }
        }
        Expr::Struct(st) => {
            for entry in &st.entries {
                walk_entry(&entry.expr, locals, refs);
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, locals, refs);
            locals.push(c.iter_var.clone());
            locals.push(c.accu_var.clone());
            walk(&c.accu_init, locals, refs);
            walk(&c.loop_cond, locals, refs);
            walk(&c.loop_step, locals, refs);
            walk(&c.result, locals, refs);
            locals.pop();
            locals.pop();
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn walk_entry(entry: &EntryExpr, locals: &mut Vec<String>, refs: &mut WhenRefs) {
    match entry {
        EntryExpr::MapEntry(e) => {
            walk(&e.key, locals, refs);
            walk(&e.value, locals, refs);
        }
        EntryExpr::StructField(f) => walk(&f.value, locals, refs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_references() {
        let (_, refs) =
            analyze("params.epochs > 3 && steps.validate.report.ok && [1,2].exists(x, x == item)")
                .unwrap();
        assert_eq!(refs.params, vec!["epochs"]);
        assert_eq!(refs.steps, vec![("validate".into(), "report".into())]);
        assert!(refs.uses_item);
        assert!(refs.problems.is_empty());
        let (_, refs) = analyze("foo == 1").unwrap();
        assert_eq!(refs.problems.len(), 1);
        assert!(analyze("params.x >").is_err());
    }

    #[test]
    fn static_evaluation() {
        let (program, _) = analyze("params.epochs > 3").unwrap();
        let mut params = BTreeMap::new();
        params.insert("epochs".to_owned(), Value::Int(2));
        assert_eq!(evaluate_static(&program, &params), Ok(Some(false)));
        let (program, _) = analyze("params.epochs + 1").unwrap();
        assert!(evaluate_static(&program, &params).is_err());
    }
}
