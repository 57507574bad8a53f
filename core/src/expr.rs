//! `${{ expression }}` templates and `if` conditions.
//!
//! Expressions are [CEL](https://cel.dev), the language Kubernetes uses for
//! validation rules, evaluated over four variables: `params` (the request's
//! validated parameters), `request` (`id`, `promise`, `promise_version`),
//! `vars` (the non-secret configuration an operator exposes, see
//! [`crate::vars`]; captured when the run is created so every engine renders
//! the same value), and `steps` (for every finished upstream step,
//! `steps.<id>.outputs` and `steps.<id>.status`). The engine's environment
//! is not readable: `env` is not a variable. A trigger's `filter` and
//! `params` are evaluated over two others instead, `event` and `vars` (an
//! [`EventContext`]; see [`crate::trigger`]).
//!
//! A string that is exactly one `${{ }}` keeps the expression's JSON type, so
//! `replicas: "${{ params.replicas }}"` renders a number; a string mixing text
//! and expressions renders to text. Rendering is pure: the same context always
//! gives the same input, which is what makes a step's attempts comparable.
//!
//! Every expression is bounded before the CEL parser sees it
//! ([`MAX_EXPRESSION_BYTES`], [`MAX_EXPRESSION_OPERATORS`]): the parser and
//! the evaluator recurse once per level of the syntax tree, and an unbounded
//! expression overflows the stack and aborts the process, at validation or
//! later at every evaluation.
//!
//! `secrets` is not a variable the engine can read: a worker step's `with`
//! (and `compensate.with`) may hold `${{ secrets.NAME }}` exactly, alone or
//! inside text, and nothing else about a secret ([`secret_reference`]).
//! Such a reference compiles to [`CompiledTemplate::Secret`] or
//! [`Segment::Secret`], renders to its own text (so task input, history and
//! logs hold the reference, never a value), and
//! [`CompiledTemplate::render_with_secrets`] also says which strings hold
//! references, as [`SecretSlot`]s for the worker that resolves them. Text
//! that merely looks like a reference (a param's value, say) is not a slot.
//!
//! A Promise's expressions are parsed once, when it is built (see
//! [`crate::compiled`]): a `with` value becomes a [`CompiledTemplate`], an
//! `if` a [`CompiledCondition`], and the engine renders those, so nothing
//! parses CEL while a run advances. [`render_value`] and
//! [`evaluate_condition`] compile their argument on every call, for one-off
//! values; the engine's clippy configuration forbids them there.

use cel::common::ast::{Expr, LiteralValue};
use cel::{IdedExpr, Program};
use serde_json::Value;

use crate::wire::{SecretPart, SecretSlot, is_valid_secret_name};

/// Longest expression source accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;

/// Most operator, bracket and member-access characters one expression may
/// hold. The CEL parser and evaluator recurse once per level of the syntax
/// tree, and a left-leaning chain (`1+1+...`, `a.b.b...`, `x['k']['k']...`)
/// is as deep as it is long; this bound keeps the deepest tree an accepted
/// expression can build well inside a 2 MiB thread stack (a tokio worker's),
/// which `tests/expressions.rs` checks for the worst shapes.
pub const MAX_EXPRESSION_OPERATORS: usize = 256;

/// Characters that can add a level to an expression's syntax tree. They are
/// counted everywhere, string literals included: a scan that skipped
/// literals would have to agree with the CEL lexer on every quoting rule,
/// and one disagreement would let a deep expression through.
const DEEPENING: &[u8] = b".+-*/%<>=!&|?:([{";

/// Refuses expressions that could exhaust the stack of the CEL parser or
/// evaluator, before they are handed to it.
fn check_size(source: &str) -> Result<(), String> {
    if source.len() > MAX_EXPRESSION_BYTES {
        return Err(format!(
            "expression is {} bytes long; at most {MAX_EXPRESSION_BYTES} are accepted: \
             compute parts of it in earlier steps",
            source.len()
        ));
    }
    let operators = source.bytes().filter(|b| DEEPENING.contains(b)).count();
    if operators > MAX_EXPRESSION_OPERATORS {
        return Err(format!(
            "expression has {operators} operators, brackets and member accesses; \
             at most {MAX_EXPRESSION_OPERATORS} are accepted: split it into smaller expressions"
        ));
    }
    Ok(())
}

/// Root variables an expression may read.
pub const ROOTS: [&str; 4] = ["params", "request", "vars", "steps"];

/// The root of secret references (see [`secret_reference`]).
pub const SECRETS_ROOT: &str = "secrets";

/// What a worker step's `with` and `compensate.with` may reference: the
/// [`ROOTS`], and secrets, as exact references only.
pub const WORKER_ROOTS: [&str; 5] = ["params", "request", "vars", "steps", SECRETS_ROOT];

/// What a `for_each` step's `with` and `compensate.with` may reference:
/// the [`WORKER_ROOTS`], and the instance's `item` and `index` (see
/// [`crate::for_each`]).
pub const FOR_EACH_ROOTS: [&str; 7] = [
    "params",
    "request",
    "vars",
    "steps",
    SECRETS_ROOT,
    crate::for_each::ITEM,
    crate::for_each::INDEX,
];

/// The secret's name if `source` (one expression's source) is exactly
/// `secrets.NAME`, NAME being `[A-Za-z_][A-Za-z0-9_]*`. Recognized as text,
/// not through CEL: anything else that reads `secrets` would compute with
/// a value the engine does not have.
pub fn secret_reference(source: &str) -> Option<&str> {
    let name = source.trim().strip_prefix("secrets.")?;
    is_valid_secret_name(name).then_some(name)
}

/// How a secret reference displays wherever its value must not: the text a
/// Promise author wrote, normalized.
pub fn secret_reference_text(name: &str) -> String {
    format!("${{{{ secrets.{name} }}}}")
}

/// Root variables a trigger's expressions may read (see [`EventContext`]).
pub const EVENT_ROOTS: [&str; 2] = ["event", "vars"];

/// Root variables a `wait.event` step's `match` may read (see
/// [`MatchContext`]).
pub const MATCH_ROOTS: [&str; 5] = ["event", "params", "request", "vars", "steps"];

/// Root variables an admission policy's rules may read (see
/// [`PolicyContext`] and [`crate::policy`]).
pub const POLICY_ROOTS: [&str; 4] = ["params", "promise", "principal", "team"];

/// A string split into literal text and expressions.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Expr(String),
}

/// A parsed expression together with what it reads.
pub struct ParsedExpression {
    pub source: String,
    program: Program,
}

// A compiled Promise is shared by every engine task through an `Arc`: its
// programs must be shareable, which `cel::Program` (plain owned syntax tree
// and source offsets, no interior mutability) is.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Program>();
};

thread_local! {
    static PARSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many expressions [`ParsedExpression::parse`] has handed to the CEL
/// parser on this thread: lets a test prove that running a compiled
/// Promise parses nothing.
pub fn parses_on_this_thread() -> u64 {
    PARSES.with(std::cell::Cell::get)
}

impl std::fmt::Debug for ParsedExpression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedExpression")
            .field("source", &self.source)
            .finish()
    }
}

/// Why a template or expression could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// The text is not a well-formed template or CEL expression.
    #[error("cannot parse {expression:?}: {message}")]
    Parse { expression: String, message: String },
    /// Evaluation failed, for example a missing key.
    #[error("cannot evaluate {expression:?}: {message}")]
    Evaluate { expression: String, message: String },
    /// An `if` condition did not evaluate to a boolean.
    #[error("condition {expression:?} evaluated to {value}, not a boolean")]
    NotBoolean { expression: String, value: String },
}

impl Template {
    /// Splits `text` at `${{ ... }}` markers. An opening marker without a
    /// closing one is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 3..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unterminated '${{{{' in {text:?}: expected '}}}}'"))?;
            let source = after[..end].trim();
            if source.is_empty() {
                return Err(format!("empty expression '${{{{ }}}}' in {text:?}"));
            }
            parts.push(Part::Expr(source.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Sources of the expressions in this template.
    pub fn expressions(&self) -> impl Iterator<Item = ParsedExpressionRef<'_>> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(s) => Some(ParsedExpressionRef(s)),
            Part::Text(_) => None,
        })
    }

    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The expression's source when the template is exactly one `${{ }}`
    /// (which renders to the expression's own JSON type, not to text).
    pub fn single_expression(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Expr(source)] => Some(source),
            _ => None,
        }
    }
}

/// An expression's source inside a [`Template`].
#[derive(Debug, Clone, Copy)]
pub struct ParsedExpressionRef<'a>(pub &'a str);

impl ParsedExpression {
    /// Parses a CEL expression, refusing first any that is longer than
    /// [`MAX_EXPRESSION_BYTES`] or holds more than
    /// [`MAX_EXPRESSION_OPERATORS`] operators, brackets and member accesses.
    pub fn parse(source: &str) -> Result<ParsedExpression, String> {
        check_size(source)?;
        PARSES.with(|n| n.set(n.get() + 1));
        let program = Program::compile(source).map_err(|e| e.to_string())?;
        Ok(ParsedExpression {
            source: source.to_string(),
            program,
        })
    }

    /// Root variables read by the expression (`params`, `steps`, ...).
    pub fn variables(&self) -> Vec<String> {
        let mut vars: Vec<String> = self
            .program
            .references()
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect();
        vars.sort();
        vars.dedup();
        vars
    }

    /// Names selected directly under `root`: for `steps.a.outputs.x` and
    /// `steps['b'].outputs`, the fields of `steps` are `a` and `b`.
    pub fn selected_fields(&self, root: &str) -> Vec<String> {
        let mut found = Vec::new();
        collect_fields(self.program.expression(), root, &mut found);
        found.sort();
        found.dedup();
        found
    }

    pub fn evaluate(&self, context: &impl Scope) -> Result<Value, RenderError> {
        let cel_context = context.to_cel();
        let value = self
            .program
            .execute(&cel_context)
            .map_err(|e| RenderError::Evaluate {
                expression: self.source.clone(),
                message: e.to_string(),
            })?;
        value.json().map_err(|e| RenderError::Evaluate {
            expression: self.source.clone(),
            message: format!("result cannot be represented as JSON: {e}"),
        })
    }
}

fn collect_fields(node: &IdedExpr, root: &str, found: &mut Vec<String>) {
    match &node.expr {
        Expr::Select(select) => {
            if matches!(&select.operand.expr, Expr::Ident(name) if name == root) {
                found.push(select.field.clone());
            }
            collect_fields(&select.operand, root, found);
        }
        Expr::Call(call) => {
            if call.func_name == "_[_]"
                && let [target, key] = call.args.as_slice()
                && matches!(&target.expr, Expr::Ident(name) if name == root)
                && let Expr::Literal(LiteralValue::String(key)) = &key.expr
            {
                found.push(key.inner().to_string());
            }
            if let Some(target) = &call.target {
                collect_fields(target, root, found);
            }
            for arg in &call.args {
                collect_fields(arg, root, found);
            }
        }
        Expr::Comprehension(c) => {
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                collect_fields(e, root, found);
            }
        }
        Expr::List(list) => {
            for e in &list.elements {
                collect_fields(e, root, found);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                if let cel::common::ast::EntryExpr::MapEntry(e) = &entry.expr {
                    collect_fields(&e.key, root, found);
                    collect_fields(&e.value, root, found);
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let cel::common::ast::EntryExpr::StructField(f) = &entry.expr {
                    collect_fields(&f.value, root, found);
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// The indexed part of a wait's `match`: a top-level conjunct
/// `<root>.<path> == <expression>` (either side) whose other side does not
/// read `<root>`. The other side is evaluated once, when the wait begins;
/// an event then matches only if its value at `path` is that value, so
/// waits can be looked up by it instead of every candidate being evaluated.
#[derive(Clone)]
pub struct Correlation {
    /// Field names under the root, outermost first: `["data", "name"]`.
    pub path: Vec<String>,
    value: IdedExpr,
}

impl std::fmt::Debug for Correlation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Correlation")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A correlation is a function of the expression it came from.
impl PartialEq for Correlation {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.value.id == other.value.id
    }
}

impl Correlation {
    /// The path as text, `data.name`: how waits and events agree on it.
    pub fn path_text(&self) -> String {
        self.path.join(".")
    }

    /// The value an event must hold at [`Self::path`], over the run's
    /// variables.
    pub fn value(&self, context: &RenderContext) -> Result<Value, RenderError> {
        let cel_context = scope::Sealed::to_cel(context);
        let value = cel_context
            .resolve(&self.value)
            .map_err(|e| RenderError::Evaluate {
                expression: "the correlated side of match".into(),
                message: e.to_string(),
            })?;
        value.json().map_err(|e| RenderError::Evaluate {
            expression: "the correlated side of match".into(),
            message: format!("result cannot be represented as JSON: {e}"),
        })
    }
}

/// The value at `path` (field names, as [`Correlation::path`]) inside
/// `value`, if there is one.
pub fn value_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, field| v.get(field))
}

/// How a correlation value is compared: its JSON text, with integral
/// numbers written as integers so `5` and `5.0` agree as CEL's `==` does.
pub fn correlation_text(value: &Value) -> String {
    match value {
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
            _ => value.to_string(),
        },
        _ => value.to_string(),
    }
}

impl ParsedExpression {
    /// The indexed part of this expression as a wait's `match` (see
    /// [`Correlation`]), if it has one.
    pub fn correlation(&self, root: &str) -> Option<Correlation> {
        find_correlation(self.program.expression(), root)
    }
}

fn find_correlation(node: &IdedExpr, root: &str) -> Option<Correlation> {
    let Expr::Call(call) = &node.expr else {
        return None;
    };
    match (call.func_name.as_str(), call.args.as_slice()) {
        ("_&&_", [left, right]) => {
            find_correlation(left, root).or_else(|| find_correlation(right, root))
        }
        ("_==_", [left, right]) => {
            let sides = [(left, right), (right, left)];
            sides.into_iter().find_map(|(path_side, value_side)| {
                let path = path_under(path_side, root)?;
                let mut reads = Vec::new();
                collect_fields(value_side, root, &mut reads);
                (!path.is_empty() && reads.is_empty() && !mentions(value_side, root)).then(|| {
                    Correlation {
                        path,
                        value: (*value_side).clone(),
                    }
                })
            })
        }
        _ => None,
    }
}

/// `root.a.b` or `root['a'].b` as `["a", "b"]`.
fn path_under(node: &IdedExpr, root: &str) -> Option<Vec<String>> {
    match &node.expr {
        Expr::Ident(name) if name == root => Some(Vec::new()),
        Expr::Select(select) if !select.test => {
            let mut path = path_under(&select.operand, root)?;
            path.push(select.field.clone());
            Some(path)
        }
        Expr::Call(call) if call.func_name == "_[_]" && call.target.is_none() => {
            let [target, key] = call.args.as_slice() else {
                return None;
            };
            let Expr::Literal(LiteralValue::String(key)) = &key.expr else {
                return None;
            };
            let mut path = path_under(target, root)?;
            path.push(key.inner().to_string());
            Some(path)
        }
        _ => None,
    }
}

/// Whether `root` appears anywhere in `node`.
fn mentions(node: &IdedExpr, root: &str) -> bool {
    match &node.expr {
        Expr::Ident(name) => name == root,
        Expr::Select(select) => mentions(&select.operand, root),
        Expr::Call(call) => {
            call.target.as_deref().is_some_and(|t| mentions(t, root))
                || call.args.iter().any(|a| mentions(a, root))
        }
        Expr::List(list) => list.elements.iter().any(|e| mentions(e, root)),
        Expr::Map(map) => map.entries.iter().any(|entry| match &entry.expr {
            cel::common::ast::EntryExpr::MapEntry(e) => {
                mentions(&e.key, root) || mentions(&e.value, root)
            }
            cel::common::ast::EntryExpr::StructField(f) => mentions(&f.value, root),
        }),
        Expr::Struct(s) => s.entries.iter().any(|entry| match &entry.expr {
            cel::common::ast::EntryExpr::StructField(f) => mentions(&f.value, root),
            cel::common::ast::EntryExpr::MapEntry(e) => {
                mentions(&e.key, root) || mentions(&e.value, root)
            }
        }),
        // A comprehension may bind any name; count it as reading the root.
        Expr::Comprehension(_) => true,
        Expr::Literal(_) | Expr::Unspecified => false,
    }
}

/// An expression parsed once, when its Promise was built. A source that
/// does not parse (only a stored Promise that skipped validation can hold
/// one) keeps its parse error, which rendering reports as it always has.
#[derive(Clone)]
pub struct CompiledExpression {
    source: String,
    program: Result<std::sync::Arc<ParsedExpression>, String>,
}

impl CompiledExpression {
    /// Parses `source`, bounds first (see [`ParsedExpression::parse`]).
    pub fn compile(source: &str) -> CompiledExpression {
        CompiledExpression {
            source: source.to_string(),
            program: ParsedExpression::parse(source).map(std::sync::Arc::new),
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed program; `None` when the source did not parse.
    pub fn parsed(&self) -> Option<&ParsedExpression> {
        self.program.as_deref().ok()
    }

    /// Evaluates the program; a source that did not parse fails as
    /// [`RenderError::Parse`].
    pub fn evaluate(&self, context: &impl Scope) -> Result<Value, RenderError> {
        match &self.program {
            Ok(program) => program.evaluate(context),
            Err(message) => Err(RenderError::Parse {
                expression: self.source.clone(),
                message: message.clone(),
            }),
        }
    }
}

/// The program is a function of its source.
impl PartialEq for CompiledExpression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl std::fmt::Debug for CompiledExpression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledExpression")
            .field("source", &self.source)
            .field("parsed", &self.program.is_ok())
            .finish()
    }
}

/// A JSON value whose strings are compiled templates: what a step's
/// `with`, a compensation's `with` and each of `spec.outputs` become when
/// their Promise is built. Rendering it parses nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum CompiledTemplate {
    /// A value without expressions, rendered as written.
    Literal(Value),
    /// A string that is exactly one `${{ }}`: keeps the expression's type.
    Expression(CompiledExpression),
    /// A string that is exactly `${{ secrets.NAME }}`: renders to that
    /// text; the worker puts the value in its place.
    Secret(String),
    /// Text and expressions: renders to text.
    Interpolated(Vec<Segment>),
    Array(Vec<CompiledTemplate>),
    /// Keys in the order the value held them.
    Object(Vec<(String, CompiledTemplate)>),
    /// A string that is not a well-formed template; rendering fails with
    /// this error.
    Invalid(RenderError),
}

/// A piece of an interpolated string.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Text(String),
    Expression(CompiledExpression),
    /// `${{ secrets.NAME }}` inside text.
    Secret(String),
}

impl CompiledTemplate {
    /// Compiles every string of `value` as a template; keys stay as written.
    pub fn compile(value: &Value) -> CompiledTemplate {
        match value {
            Value::String(text) => match Template::parse(text) {
                Err(message) => CompiledTemplate::Invalid(RenderError::Parse {
                    expression: text.clone(),
                    message,
                }),
                Ok(template) if template.is_literal() => CompiledTemplate::Literal(value.clone()),
                Ok(template) => match template.parts.as_slice() {
                    [Part::Expr(source)] => match secret_reference(source) {
                        Some(name) => CompiledTemplate::Secret(name.to_string()),
                        None => CompiledTemplate::Expression(CompiledExpression::compile(source)),
                    },
                    parts => CompiledTemplate::Interpolated(
                        parts
                            .iter()
                            .map(|part| match part {
                                Part::Text(text) => Segment::Text(text.clone()),
                                Part::Expr(source) => match secret_reference(source) {
                                    Some(name) => Segment::Secret(name.to_string()),
                                    None => {
                                        Segment::Expression(CompiledExpression::compile(source))
                                    }
                                },
                            })
                            .collect(),
                    ),
                },
            },
            Value::Array(items) => {
                CompiledTemplate::Array(items.iter().map(CompiledTemplate::compile).collect())
            }
            Value::Object(map) => CompiledTemplate::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), CompiledTemplate::compile(v)))
                    .collect(),
            ),
            other => CompiledTemplate::Literal(other.clone()),
        }
    }

    /// Every expression of the template, in order.
    pub fn expressions(&self) -> Vec<&CompiledExpression> {
        fn walk<'a>(t: &'a CompiledTemplate, out: &mut Vec<&'a CompiledExpression>) {
            match t {
                CompiledTemplate::Literal(_)
                | CompiledTemplate::Invalid(_)
                | CompiledTemplate::Secret(_) => {}
                CompiledTemplate::Expression(e) => out.push(e),
                CompiledTemplate::Interpolated(segments) => {
                    out.extend(segments.iter().filter_map(|s| match s {
                        Segment::Expression(e) => Some(e),
                        Segment::Text(_) | Segment::Secret(_) => None,
                    }));
                }
                CompiledTemplate::Array(items) => items.iter().for_each(|i| walk(i, out)),
                CompiledTemplate::Object(entries) => entries.iter().for_each(|(_, v)| walk(v, out)),
            }
        }
        let mut out = Vec::new();
        walk(self, &mut out);
        out
    }

    /// Renders the value: the same result, and the same first error, as
    /// [`render_value`] on the value this was compiled from. Secret
    /// references render to their own text.
    pub fn render(&self, context: &impl Scope) -> Result<Value, RenderError> {
        self.render_at(context, None)
    }

    /// Renders the value as [`Self::render`] does, and lists the strings
    /// that hold secret references and how to build each: what a task
    /// message carries for its worker (see [`SecretSlot`]). Only references
    /// the Promise wrote count; text a rendered expression produced is
    /// never a slot, whatever it looks like.
    pub fn render_with_secrets(
        &self,
        context: &impl Scope,
    ) -> Result<(Value, Vec<SecretSlot>), RenderError> {
        let mut slots = Slots::default();
        let value = self.render_at(context, Some(&mut slots))?;
        Ok((value, slots.found))
    }

    fn render_at<'a>(
        &'a self,
        context: &impl Scope,
        mut slots: Option<&mut Slots<'a>>,
    ) -> Result<Value, RenderError> {
        Ok(match self {
            CompiledTemplate::Literal(value) => value.clone(),
            CompiledTemplate::Expression(expression) => expression.evaluate(context)?,
            CompiledTemplate::Secret(name) => {
                if let Some(slots) = slots {
                    slots.found(vec![SecretPart::Secret(name.clone())]);
                }
                Value::String(secret_reference_text(name))
            }
            CompiledTemplate::Interpolated(segments) => {
                let mut out = String::new();
                // The pieces of a string holding secrets; text runs between
                // references are merged.
                let mut parts = Vec::new();
                let mut text = String::new();
                for segment in segments {
                    match segment {
                        Segment::Text(literal) => text.push_str(literal),
                        Segment::Expression(expression) => match expression.evaluate(context)? {
                            Value::String(s) => text.push_str(&s),
                            Value::Null => {}
                            other => text.push_str(&other.to_string()),
                        },
                        Segment::Secret(name) => {
                            out.push_str(&text);
                            out.push_str(&secret_reference_text(name));
                            if !text.is_empty() {
                                parts.push(SecretPart::Text(std::mem::take(&mut text)));
                            }
                            parts.push(SecretPart::Secret(name.clone()));
                        }
                    }
                }
                out.push_str(&text);
                if !parts.is_empty() {
                    if !text.is_empty() {
                        parts.push(SecretPart::Text(text));
                    }
                    if let Some(slots) = slots {
                        slots.found(parts);
                    }
                }
                Value::String(out)
            }
            CompiledTemplate::Array(items) => {
                let mut rendered = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    if let Some(slots) = slots.as_deref_mut() {
                        slots.path.push(PathStep::Index(index));
                    }
                    rendered.push(item.render_at(context, slots.as_deref_mut())?);
                    if let Some(slots) = slots.as_deref_mut() {
                        slots.path.pop();
                    }
                }
                Value::Array(rendered)
            }
            CompiledTemplate::Object(entries) => {
                let mut rendered = serde_json::Map::new();
                for (key, value) in entries {
                    if let Some(slots) = slots.as_deref_mut() {
                        slots.path.push(PathStep::Key(key));
                    }
                    let value = value.render_at(context, slots.as_deref_mut())?;
                    if let Some(slots) = slots.as_deref_mut() {
                        slots.path.pop();
                    }
                    rendered.insert(key.clone(), value);
                }
                Value::Object(rendered)
            }
            CompiledTemplate::Invalid(error) => return Err(error.clone()),
        })
    }
}

/// Where rendering is inside the value, and the secret slots found so far.
#[derive(Default)]
struct Slots<'a> {
    path: Vec<PathStep<'a>>,
    found: Vec<SecretSlot>,
}

enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

impl Slots<'_> {
    fn found(&mut self, parts: Vec<SecretPart>) {
        let mut pointer = String::new();
        for step in &self.path {
            pointer.push('/');
            match step {
                // RFC 6901: `~` first, so an escaped `/` is not re-escaped.
                PathStep::Key(key) => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
                PathStep::Index(index) => pointer.push_str(&index.to_string()),
            }
        }
        self.found.push(SecretSlot { pointer, parts });
    }
}

/// An `if` condition, compiled (with its optional `${{ }}` stripped).
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledCondition(CompiledExpression);

impl CompiledCondition {
    pub fn compile(condition: &str) -> CompiledCondition {
        CompiledCondition(CompiledExpression::compile(condition_source(condition)))
    }

    pub fn expression(&self) -> &CompiledExpression {
        &self.0
    }

    /// Evaluates the condition; anything but a boolean is an error.
    pub fn evaluate(&self, context: &impl Scope) -> Result<bool, RenderError> {
        match self.0.evaluate(context)? {
            Value::Bool(b) => Ok(b),
            other => Err(RenderError::NotBoolean {
                expression: self.0.source.clone(),
                value: other.to_string(),
            }),
        }
    }
}

/// The variables an expression is evaluated over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RenderContext {
    pub params: Value,
    pub request: Value,
    /// The captured vars the Promise reads (see [`crate::vars::Vars::capture`]).
    pub vars: Value,
    /// `{ "<step id>": { "outputs": ..., "status": ... } }`.
    pub steps: Value,
}

/// The variables a trigger's expressions are evaluated over: the
/// CloudEvent (as a JSON object) and the captured vars. Nothing else is
/// readable, which validation enforces before any of them runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventContext<'a> {
    pub event: &'a Value,
    pub vars: &'a Value,
}

/// The variables a `wait.event` step's `match` is evaluated over: a
/// candidate event, and the run's variables as they stood when the wait
/// began.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatchContext<'a> {
    pub event: &'a Value,
    pub run: &'a RenderContext,
}

/// The variables an instance of a `for_each` step renders its `with` (and
/// its compensation's) over: the run's, and the instance's `item` and
/// `index` (see [`crate::for_each`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemContext<'a> {
    pub run: &'a RenderContext,
    pub item: &'a Value,
    pub index: usize,
}

/// The variables an admission policy's rules are evaluated over (see
/// [`crate::policy`]): the request's validated params, the Promise
/// (`name`, `version`, `owner`, `labels`), the principal filing it (`id`,
/// `team`, `roles`, `authenticated`) and its team, which stays `null` when
/// there is none so that `team == 'x'` is simply false.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyContext<'a> {
    pub params: &'a Value,
    pub promise: &'a Value,
    pub principal: &'a Value,
    pub team: &'a Value,
}

/// What an expression can be evaluated over: a run's [`RenderContext`], a
/// trigger's [`EventContext`] or a wait's [`MatchContext`]. Sealed: the variables a Promise may read are
/// fixed here, next to [`ROOTS`] and [`EVENT_ROOTS`].
pub trait Scope: scope::Sealed {}

mod scope {
    pub trait Sealed {
        fn to_cel(&self) -> cel::Context<'static, 'static>;
    }
}

impl Scope for RenderContext {}
impl Scope for EventContext<'_> {}
impl Scope for MatchContext<'_> {}
impl Scope for PolicyContext<'_> {}
impl Scope for ItemContext<'_> {}

impl scope::Sealed for RenderContext {
    fn to_cel(&self) -> cel::Context<'static, 'static> {
        cel_context([
            ("params", &self.params),
            ("request", &self.request),
            ("vars", &self.vars),
            ("steps", &self.steps),
        ])
    }
}

impl scope::Sealed for EventContext<'_> {
    fn to_cel(&self) -> cel::Context<'static, 'static> {
        cel_context([("event", self.event), ("vars", self.vars)])
    }
}

impl scope::Sealed for MatchContext<'_> {
    fn to_cel(&self) -> cel::Context<'static, 'static> {
        cel_context([
            ("event", self.event),
            ("params", &self.run.params),
            ("request", &self.run.request),
            ("vars", &self.run.vars),
            ("steps", &self.run.steps),
        ])
    }
}

impl scope::Sealed for ItemContext<'_> {
    fn to_cel(&self) -> cel::Context<'static, 'static> {
        let mut context = scope::Sealed::to_cel(self.run);
        // Unlike the roots, an item is a value in its own right: a null
        // item stays null rather than becoming an empty map.
        context.add_variable_from_value(crate::for_each::ITEM, json_to_cel(self.item));
        context.add_variable_from_value(
            crate::for_each::INDEX,
            cel::Value::Int(i64::try_from(self.index).unwrap_or(i64::MAX)),
        );
        context
    }
}

impl scope::Sealed for PolicyContext<'_> {
    fn to_cel(&self) -> cel::Context<'static, 'static> {
        let mut context = cel_context([
            ("params", self.params),
            ("promise", self.promise),
            ("principal", self.principal),
        ]);
        // Unlike the roots above, a missing team is a value rules compare
        // (`team == 'team-data'`), not a map whose fields are read.
        context.add_variable_from_value("team", json_to_cel(self.team));
        context
    }
}

/// A CEL context holding these variables; a null one becomes an empty map,
/// so reading a field of it fails as a missing key rather than a type error.
fn cel_context<const N: usize>(variables: [(&str, &Value); N]) -> cel::Context<'static, 'static> {
    let mut context = cel::Context::default();
    for (name, value) in variables {
        let value = if value.is_null() {
            cel::Value::Map(std::collections::HashMap::<String, cel::Value>::new().into())
        } else {
            json_to_cel(value)
        };
        context.add_variable_from_value(name, value);
    }
    context
}

/// Converts JSON to CEL, keeping integers signed: CEL does not add `uint`
/// to `int`, and `params.replicas + 1` must work.
fn json_to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(std::sync::Arc::new(s.clone())),
        Value::Array(items) => {
            cel::Value::List(std::sync::Arc::new(items.iter().map(json_to_cel).collect()))
        }
        Value::Object(map) => cel::Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), json_to_cel(v)))
                .collect::<std::collections::HashMap<String, cel::Value>>()
                .into(),
        ),
    }
}

/// Renders every string of a JSON value as a template; keys stay as written.
/// Compiles `value` first, every time: for a one-off value. A Promise's
/// templates are compiled once, when it is built (see
/// [`crate::Promise::with_of`]), and rendered with
/// [`CompiledTemplate::render`].
pub fn render_value(value: &Value, context: &RenderContext) -> Result<Value, RenderError> {
    CompiledTemplate::compile(value).render(context)
}

/// Strips an optional `${{ }}` around a condition.
pub fn condition_source(condition: &str) -> &str {
    let trimmed = condition.trim();
    trimmed
        .strip_prefix("${{")
        .and_then(|s| s.strip_suffix("}}"))
        .map(str::trim)
        .unwrap_or(trimmed)
}

/// Evaluates an `if` condition; anything but a boolean is an error.
/// Compiles it first, every time: a Promise's conditions are compiled once
/// and evaluated with [`CompiledCondition::evaluate`].
pub fn evaluate_condition(condition: &str, context: &RenderContext) -> Result<bool, RenderError> {
    CompiledCondition::compile(condition).evaluate(context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> RenderContext {
        RenderContext {
            params: json!({"name": "orders", "size": "large", "replicas": 3}),
            request: json!({"id": "r1"}),
            vars: json!({"provisioner_url": "http://127.0.0.1:9"}),
            steps: json!({"provision": {"status": "succeeded", "outputs": {"endpoint": "db:5432"}},
                           "provision-b": {"status": "succeeded", "outputs": {"n": 1}}}),
        }
    }

    #[test]
    fn renders_typed_values_and_interpolated_text() {
        let input = json!({
            "url": "${{ vars.provisioner_url }}/databases/${{ params.name }}",
            "replicas": "${{ params.replicas }}",
            "endpoint": "${{ steps.provision.outputs.endpoint }}",
            "n": "${{ steps['provision-b'].outputs.n + 1 }}",
            "list": ["${{ params.size == 'large' }}", "plain"],
        });
        let out = render_value(&input, &context()).unwrap();
        assert_eq!(
            out,
            json!({
                "url": "http://127.0.0.1:9/databases/orders",
                "replicas": 3,
                "endpoint": "db:5432",
                "n": 2,
                "list": [true, "plain"],
            })
        );
        let missing = render_value(&json!("${{ params.nope }}"), &context()).unwrap_err();
        assert!(matches!(missing, RenderError::Evaluate { .. }), "{missing}");
    }

    #[test]
    fn conditions_must_be_boolean() {
        assert!(evaluate_condition("params.size == 'large'", &context()).unwrap());
        assert!(!evaluate_condition("${{ params.size == 'small' }}", &context()).unwrap());
        assert!(matches!(
            evaluate_condition("params.name", &context()),
            Err(RenderError::NotBoolean { .. })
        ));
    }

    #[test]
    fn finds_referenced_steps_and_vars() {
        let e = ParsedExpression::parse(
            "steps.a.outputs.x + steps['b-c'].outputs.y + size(vars.token)",
        )
        .unwrap();
        assert_eq!(e.selected_fields("steps"), vec!["a", "b-c"]);
        assert_eq!(e.selected_fields("vars"), vec!["token"]);
        assert_eq!(e.variables(), vec!["steps", "vars"]);
        assert!(Template::parse("x ${{ a").is_err());
        assert!(Template::parse("${{ }}").is_err());
        assert!(ParsedExpression::parse("params.size ==").is_err());
    }
}
