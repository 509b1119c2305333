//! FHIRPath Patch (FHIR R4 §fhirpatch), applied here within the same bounds as JSON Patch.
//!
//! Why it exists: fhir-fence never lets the upstream apply a patch, because the upstream would
//! change a resource no check saw. `PATCH` is a read-modify-write (`scope::write::patch`): the
//! caller's own resource is read, patched here, and written back through the ordinary write
//! path, which stamps it, keeps its id in the tenant's namespace and checks every reference and
//! canonical. So this module only has to compute the patched resource, exactly and within bounds.
//!
//! A FHIRPath Patch is a `Parameters` resource whose `operation` parameters each hold the parts
//! `type` (`add`, `insert`, `delete`, `replace`, `move`), `path`, and as the type needs `name`,
//! `value` (a `value[x]`, or `part`s named after the elements of a complex value), `index`,
//! `source` and `destination`. The paths are FHIRPath, of which fhir-fence evaluates an
//! allow-listed subset, parsed into a small typed AST ([`Path`]) and navigated along the R4
//! element table (`fhir::shape::Model`), so `Patient.contact.name` knows `contact` repeats and
//! `Observation.value` finds `valueQuantity`:
//! - the resource type as the first step (it must be the patched resource's);
//! - child element names (a choice element by its FHIRPath name, narrowed by `.ofType(Type)`);
//! - indexers `[n]` and the functions `first()`, `last()`;
//! - `where(a = literal and b.c = literal …)`: element paths compared with string (single
//!   quotes, FHIRPath escapes), integer and boolean literals.
//!
//! Everything else is refused ([`PatchError::Unsupported`]), never approximated. Elements with
//! primitive extensions (`_given` beside `given`) are refused where an operation would change
//! them: keeping the two arrays aligned is not implemented. Where one element is needed (every
//! operation's path but `delete`'s, which may select none) a path selecting several is refused,
//! as the specification says (HAPI agrees since 8.x). Unlike HAPI, `add` to an element that
//! cannot repeat and already has a value is refused (HAPI overwrites it), and an unknown element
//! name is an error (HAPI finds nothing).
//!
//! Bounds, shared with JSON Patch through [`Budget`]: at most [`MAX_OPERATIONS`] operations; an
//! upper bound of the document's serialised size kept under the body limit before every
//! operation, from the sizes of the values each one adds and removes; the bytes of values
//! touched (and of nodes visited by paths) at most `WORK_FACTOR` × the limit.
use super::patch::{size, Budget, PatchError, MAX_OPERATIONS};
use super::shape::{Element, Holds, Model, TypeRef};
use serde_json::{Map, Value};

/// The longest FHIRPath expression accepted.
pub const MAX_PATH_LEN: usize = 1024;

/// How deep a complex value built from `part`s may nest.
const MAX_VALUE_DEPTH: usize = 16;

/// What a path visit costs in the work budget, per node produced (a node is at least two bytes
/// of JSON: the budget stays "bytes looked at").
const NODE_COST: usize = 2;

/// A `PATCH` body, read as the patch it is: JSON Patch (an array, `application/json-patch+json`)
/// or FHIRPath Patch (a `Parameters` resource, `application/fhir+json`), as `request::parse_body`
/// let it through by its media type.
#[derive(Debug)]
pub enum Patch {
    Json(json_patch::Patch),
    FhirPath(Vec<Operation>),
}

impl Patch {
    /// Reads a patch body: a JSON array is JSON Patch, a `Parameters` resource FHIRPath Patch.
    pub fn parse(body: Value) -> Result<Patch, PatchError> {
        match body {
            Value::Array(_) => serde_json::from_value(body)
                .map(Patch::Json)
                .map_err(|e| PatchError::Malformed(format!("not a JSON Patch document: {e}"))),
            Value::Object(ref o) if o.get("resourceType").and_then(Value::as_str) == Some("Parameters") => {
                parse_parameters(&body).map(Patch::FhirPath)
            }
            _ => Err(PatchError::Malformed(
                "a patch is a JSON Patch array or a FHIRPath Patch Parameters resource".into(),
            )),
        }
    }

    /// Applies the patch to `doc` within the bounds of `limit` (see the module comment).
    pub fn apply(&self, doc: &mut Value, limit: usize) -> Result<(), PatchError> {
        match self {
            Patch::Json(p) => super::patch::apply(doc, p, limit),
            Patch::FhirPath(ops) => apply(doc, ops, limit),
        }
    }
}

/// One FHIRPath Patch operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Add { path: Path, name: String, value: NewValue },
    Insert { path: Path, index: usize, value: NewValue },
    Delete { path: Path },
    Replace { path: Path, value: NewValue },
    Move { path: Path, source: usize, destination: usize },
}

/// The value an operation writes.
#[derive(Debug, Clone, PartialEq)]
pub enum NewValue {
    /// A `value[x]`: its type as the member names it (`HumanName`, `String`) and its JSON.
    Typed { ty: String, json: Value },
    /// A complex value given as `part`s, each named after one of its elements.
    Parts(Vec<(String, NewValue)>),
}

/// A parsed FHIRPath expression of the supported subset.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    rtype: String,
    steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Child(String),
    Index(usize),
    First,
    Last,
    OfType(String),
    Where(Vec<Condition>),
}

/// `a.b = literal` inside `where(…)`.
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    path: Vec<String>,
    value: Literal,
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    String(String),
    Integer(i64),
    Boolean(bool),
}

fn invalid(msg: impl Into<String>) -> PatchError {
    PatchError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------------------------
// The Parameters resource

fn parse_parameters(body: &Value) -> Result<Vec<Operation>, PatchError> {
    let Some(obj) = body.as_object() else { return Err(PatchError::Malformed("not a Parameters resource".into())) };
    if let Some(key) = obj.keys().find(|k| !matches!(k.as_str(), "resourceType" | "id" | "meta" | "parameter")) {
        return Err(invalid(format!("a FHIRPath Patch Parameters may not hold {key:?}")));
    }
    let params = match obj.get("parameter") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(PatchError::Malformed("Parameters.parameter must be an array".into())),
    };
    if params.len() > MAX_OPERATIONS {
        return Err(PatchError::TooManyOperations(params.len()));
    }
    params.iter().enumerate().map(|(i, p)| operation(p).map_err(|e| at_operation(i, e))).collect()
}

/// Names the operation an error was found in.
fn at_operation(i: usize, e: PatchError) -> PatchError {
    match e {
        PatchError::Invalid(m) => PatchError::Invalid(format!("operation {}: {m}", i + 1)),
        PatchError::Unsupported(m) => PatchError::Unsupported(format!("operation {}: {m}", i + 1)),
        other => other,
    }
}

fn operation(param: &Value) -> Result<Operation, PatchError> {
    let obj = param.as_object().ok_or_else(|| invalid("a parameter must be an object"))?;
    let name = obj.get("name").and_then(Value::as_str).unwrap_or("");
    if name != "operation" {
        return Err(invalid(format!("unknown patch parameter {name:?} (only \"operation\" is defined)")));
    }
    if let Some(key) = obj.keys().find(|k| !matches!(k.as_str(), "name" | "id" | "part")) {
        return Err(invalid(format!("an operation parameter may not hold {key:?}")));
    }
    let parts = obj.get("part").and_then(Value::as_array).ok_or_else(|| invalid("an operation needs its parts"))?;
    let (mut ty, mut path, mut name, mut value) = (None, None, None, None);
    let (mut index, mut source, mut destination) = (None, None, None);
    for part in parts {
        let pobj = part.as_object().ok_or_else(|| invalid("a part must be an object"))?;
        let pname = pobj.get("name").and_then(Value::as_str).unwrap_or("");
        let slot_taken = match pname {
            "type" => ty.replace(string_part(pobj, "type", &["valueCode", "valueString"])?).is_some(),
            "path" => path.replace(string_part(pobj, "path", &["valueString"])?).is_some(),
            "name" => name.replace(string_part(pobj, "name", &["valueString"])?).is_some(),
            "index" => index.replace(integer_part(pobj, "index")?).is_some(),
            "source" => source.replace(integer_part(pobj, "source")?).is_some(),
            "destination" => destination.replace(integer_part(pobj, "destination")?).is_some(),
            "value" => value.replace(new_value(pobj, 0)?).is_some(),
            other => return Err(invalid(format!("unknown operation part {other:?}"))),
        };
        if slot_taken {
            return Err(invalid(format!("the part {pname:?} appears twice")));
        }
    }
    let ty = ty.ok_or_else(|| invalid("an operation needs a type"))?;
    let path = Path::parse(&path.ok_or_else(|| invalid(format!("a {ty} operation needs a path")))?)?;
    fn need<T>(v: Option<T>, ty: &str, what: &str) -> Result<T, PatchError> {
        v.ok_or_else(|| invalid(format!("a {ty} operation needs {what}")))
    }
    let given = [("name", name.is_some()), ("value", value.is_some()), ("index", index.is_some())]
        .into_iter()
        .chain([("source", source.is_some()), ("destination", destination.is_some())]);
    let allowed: &[&str] = match ty.as_str() {
        "add" => &["name", "value"],
        "insert" => &["value", "index"],
        "delete" => &[],
        "replace" => &["value"],
        "move" => &["source", "destination"],
        other => return Err(invalid(format!("unknown patch operation type {other:?}"))),
    };
    if let Some((extra, _)) = given.filter(|(_, is)| *is).find(|(p, _)| !allowed.contains(p)) {
        return Err(invalid(format!("a {ty} operation takes no {extra}")));
    }
    Ok(match ty.as_str() {
        "add" => {
            let name = need(name, &ty, "a name")?;
            if !is_identifier(&name) {
                return Err(invalid(format!("{name:?} is not an element name")));
            }
            Operation::Add { path, name, value: need(value, &ty, "a value")? }
        }
        "insert" => {
            Operation::Insert { path, index: need(index, &ty, "an index")?, value: need(value, &ty, "a value")? }
        }
        "delete" => Operation::Delete { path },
        "replace" => Operation::Replace { path, value: need(value, &ty, "a value")? },
        _ => Operation::Move {
            path,
            source: need(source, &ty, "a source")?,
            destination: need(destination, &ty, "a destination")?,
        },
    })
}

/// The string value of part `what`, which must be one of `kinds`.
fn string_part(part: &Map<String, Value>, what: &str, kinds: &[&str]) -> Result<String, PatchError> {
    only_value(part, what)?;
    kinds
        .iter()
        .find_map(|k| part.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
        .ok_or_else(|| invalid(format!("the part {what:?} must be a {}", kinds.join(" or "))))
}

/// The whole, non-negative number of part `what`.
fn integer_part(part: &Map<String, Value>, what: &str) -> Result<usize, PatchError> {
    only_value(part, what)?;
    ["valueInteger", "valueUnsignedInt", "valuePositiveInt"]
        .iter()
        .find_map(|k| part.get(*k).and_then(Value::as_u64))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| invalid(format!("the part {what:?} must be a valueInteger, at least 0")))
}

/// A part with a simple value holds its name and one `value[x]`, nothing else.
fn only_value(part: &Map<String, Value>, what: &str) -> Result<(), PatchError> {
    let extra = part.keys().filter(|k| !matches!(k.as_str(), "name" | "id")).count();
    if extra != 1 {
        return Err(invalid(format!("the part {what:?} must hold exactly one value")));
    }
    Ok(())
}

/// The `value` part (or a part inside one): a `value[x]`, or `part`s naming a complex value's elements.
fn new_value(part: &Map<String, Value>, depth: usize) -> Result<NewValue, PatchError> {
    if depth > MAX_VALUE_DEPTH {
        return Err(invalid(format!("a value may nest at most {MAX_VALUE_DEPTH} levels of parts")));
    }
    let mut found = None;
    for (key, v) in part {
        let this = match key.as_str() {
            "name" | "id" => continue,
            "part" => {
                let list = v.as_array().ok_or_else(|| invalid("part must be an array"))?;
                let mut parts = Vec::with_capacity(list.len());
                for p in list {
                    let pobj = p.as_object().ok_or_else(|| invalid("a part must be an object"))?;
                    let name = pobj.get("name").and_then(Value::as_str).unwrap_or("");
                    if !is_identifier(name) {
                        return Err(invalid(format!("a value's part must be named after an element, not {name:?}")));
                    }
                    parts.push((name.to_owned(), new_value(pobj, depth + 1)?));
                }
                NewValue::Parts(parts)
            }
            k if k.starts_with('_') => {
                return Err(PatchError::Unsupported(format!("primitive extensions on a value ({k})")))
            }
            k => match k.strip_prefix("value").filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase())) {
                Some(ty) => NewValue::Typed { ty: ty.to_owned(), json: v.clone() },
                None => return Err(PatchError::Unsupported(format!("a value given as {k:?}"))),
            },
        };
        if found.replace(this).is_some() {
            return Err(invalid("a value must be one value[x] or its parts, not both"));
        }
    }
    match found {
        Some(NewValue::Parts(p)) if p.is_empty() => Err(invalid("a value given as parts needs at least one")),
        Some(v) => Ok(v),
        None => Err(invalid("a value part holds no value")),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---------------------------------------------------------------------------------------------
// The FHIRPath subset

impl Path {
    /// Parses `text` as a path of the supported subset (module comment), or says why not.
    pub fn parse(text: &str) -> Result<Path, PatchError> {
        if text.len() > MAX_PATH_LEN {
            return Err(PatchError::Unsupported(format!("a path longer than {MAX_PATH_LEN} characters")));
        }
        let mut p = Parser { text, pos: 0 };
        let rtype = p.identifier()?;
        let mut steps = Vec::new();
        loop {
            p.skip_ws();
            match p.peek() {
                None => break,
                Some('.') => {
                    p.pos += 1;
                    let name = p.identifier()?;
                    p.skip_ws();
                    if p.peek() == Some('(') {
                        p.pos += 1;
                        steps.push(p.function(&name)?);
                    } else {
                        steps.push(Step::Child(name));
                    }
                }
                Some('[') => {
                    p.pos += 1;
                    p.skip_ws();
                    let n = p.integer()?;
                    let n = usize::try_from(n).map_err(|_| p.unsupported("a negative index"))?;
                    p.expect(']')?;
                    steps.push(Step::Index(n));
                }
                Some(_) => return Err(p.unsupported("this expression")),
            }
        }
        Ok(Path { text: text.to_owned(), rtype, steps })
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn unsupported(&self, what: &str) -> PatchError {
        PatchError::Unsupported(format!("{what} at character {} of {:?}", self.pos + 1, self.text))
    }

    fn expect(&mut self, c: char) -> Result<(), PatchError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unsupported(&format!("expected {c:?}")))
        }
    }

    fn identifier(&mut self) -> Result<String, PatchError> {
        self.skip_ws();
        let rest = &self.text[self.pos..];
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        let ident = &rest[..len];
        if !is_identifier(ident) {
            return Err(self.unsupported("expected an element name"));
        }
        self.pos += len;
        Ok(ident.to_owned())
    }

    fn integer(&mut self) -> Result<i64, PatchError> {
        let rest = &self.text[self.pos..];
        let sign = usize::from(rest.starts_with('-'));
        let len = sign + rest[sign..].find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len() - sign);
        let n = rest[..len].parse().map_err(|_| self.unsupported("expected a whole number"))?;
        self.pos += len;
        Ok(n)
    }

    /// `name(` was read: the supported functions.
    fn function(&mut self, name: &str) -> Result<Step, PatchError> {
        let step = match name {
            "first" => Step::First,
            "last" => Step::Last,
            "ofType" => {
                let mut ty = self.identifier()?;
                self.skip_ws();
                if ty == "FHIR" && self.peek() == Some('.') {
                    self.pos += 1;
                    ty = self.identifier()?;
                }
                Step::OfType(ty)
            }
            "where" => {
                let mut conditions = vec![self.condition()?];
                loop {
                    self.skip_ws();
                    let rest = &self.text[self.pos..];
                    if rest.starts_with("and") && rest[3..].starts_with(|c: char| c.is_ascii_whitespace() || c == '(') {
                        self.pos += 3;
                        conditions.push(self.condition()?);
                    } else {
                        break;
                    }
                }
                Step::Where(conditions)
            }
            other => return Err(self.unsupported(&format!("the function {other}()"))),
        };
        self.expect(')')?;
        Ok(step)
    }

    /// `a.b = literal`.
    fn condition(&mut self) -> Result<Condition, PatchError> {
        let mut path = vec![self.identifier()?];
        loop {
            self.skip_ws();
            if self.peek() != Some('.') {
                break;
            }
            self.pos += 1;
            path.push(self.identifier()?);
        }
        self.expect('=')?;
        self.skip_ws();
        let value = match self.peek() {
            Some('\'') => Literal::String(self.string()?),
            Some(c) if c.is_ascii_digit() || c == '-' => Literal::Integer(self.integer()?),
            _ => match self.identifier()?.as_str() {
                "true" => Literal::Boolean(true),
                "false" => Literal::Boolean(false),
                _ => return Err(self.unsupported("expected a string, integer or boolean literal")),
            },
        };
        Ok(Condition { path, value })
    }

    /// A single-quoted string with FHIRPath's escapes.
    fn string(&mut self) -> Result<String, PatchError> {
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.text[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\'' => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => {
                    let escaped = match chars.next().map(|(_, e)| e) {
                        Some(e @ ('\'' | '"' | '`' | '\\' | '/')) => e,
                        Some('f') => '\u{c}',
                        Some('n') => '\n',
                        Some('r') => '\r',
                        Some('t') => '\t',
                        Some('u') => {
                            let hex: String = (0..4).filter_map(|_| chars.next().map(|(_, h)| h)).collect();
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .filter(|_| hex.len() == 4)
                                .and_then(char::from_u32)
                                .ok_or_else(|| self.unsupported("an invalid \\u escape"))?
                        }
                        _ => return Err(self.unsupported("an invalid escape")),
                    };
                    out.push(escaped);
                }
                c => out.push(c),
            }
        }
        Err(self.unsupported("an unterminated string"))
    }
}

// ---------------------------------------------------------------------------------------------
// Navigation

/// One step into the JSON document.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Item(usize),
}

/// A node a path selected: where it is, what it holds, and the element it is a value of.
#[derive(Debug, Clone)]
struct Node {
    at: Vec<Seg>,
    holds: Holds,
    slot: Option<Slot>,
}

/// The element a node is (one of) the value(s) of.
#[derive(Debug, Clone)]
struct Slot {
    /// The type the element belongs to.
    parent: TypeRef,
    /// The element's FHIRPath name (`value` for `valueQuantity`).
    name: String,
    /// The JSON member holding it.
    member: String,
    choice: bool,
}

fn get<'a>(doc: &'a Value, at: &[Seg]) -> Option<&'a Value> {
    at.iter().try_fold(doc, |v, seg| match seg {
        Seg::Key(k) => v.get(k.as_str()),
        Seg::Item(i) => v.get(*i),
    })
}

fn get_mut<'a>(doc: &'a mut Value, at: &[Seg]) -> Option<&'a mut Value> {
    at.iter().try_fold(doc, |v, seg| match seg {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Item(i) => v.get_mut(*i),
    })
}

/// The type of the object at a node, or why nothing can be found inside it.
fn type_of(doc: &Value, node: &Node, model: &Model) -> Result<TypeRef, PatchError> {
    match node.holds {
        Holds::Complex(t) => Ok(t),
        Holds::Resource => get(doc, &node.at)
            .and_then(|v| v.get("resourceType"))
            .and_then(Value::as_str)
            .and_then(|r| model.resource_type(r))
            .ok_or_else(|| invalid("a contained resource without a known resourceType")),
        Holds::Primitive => {
            Err(PatchError::Unsupported("elements inside a primitive value (its id or extensions)".into()))
        }
    }
}

/// The element `name` (FHIRPath name) of type `of`: `Ok(None)` for a choice element (whose
/// member depends on the value's type), an error for an element the type does not have.
fn element(model: &Model, of: TypeRef, name: &str) -> Result<Option<Element>, PatchError> {
    if model.is_choice(of, name) {
        return Ok(None);
    }
    match model.element_of(of, name) {
        Some(e) if !e.choice => Ok(Some(e)),
        _ => Err(invalid(format!("there is no element {name:?} here"))),
    }
}

/// The member of choice element `name` present in `obj`, if any.
fn present_variant<'a>(model: &Model, of: TypeRef, name: &str, obj: &'a Map<String, Value>) -> Option<&'a str> {
    obj.keys().map(String::as_str).find(|k| k.starts_with(name) && model.choice_of(of, k) == Some(name))
}

/// The variant member of choice element `name` for a value of type `ty` (`value` + `Quantity`).
fn variant(model: &Model, of: TypeRef, name: &str, ty: &str) -> Result<(String, Element), PatchError> {
    let member = format!("{name}{}", capitalised(ty));
    match model.element_of(of, &member) {
        Some(e) if model.choice_of(of, &member) == Some(name) => Ok((member, e)),
        _ => Err(invalid(format!("the element {name:?} cannot hold a value of type {ty}"))),
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

/// The nodes `path` (its first `steps` steps) selects in `doc`, each charged to `budget`.
fn select(doc: &Value, path: &Path, steps: usize, budget: &mut Budget) -> Result<Vec<Node>, PatchError> {
    let model = Model::r4();
    let rtype = doc.get("resourceType").and_then(Value::as_str).unwrap_or("");
    if path.rtype != rtype {
        return Err(invalid(format!("the path {path} does not start with the resource's type {rtype}")));
    }
    let root = model.resource_type(rtype).ok_or_else(|| invalid(format!("unknown resource type {rtype}")))?;
    let mut nodes = vec![Node { at: Vec::new(), holds: Holds::Complex(root), slot: None }];
    for step in &path.steps[..steps] {
        nodes = match step {
            Step::Child(name) => {
                let mut out = Vec::new();
                for node in &nodes {
                    children(doc, node, name, model, &mut out)?;
                }
                out
            }
            Step::Index(n) => nodes.into_iter().nth(*n).into_iter().collect(),
            Step::First => nodes.into_iter().take(1).collect(),
            Step::Last => nodes.pop().into_iter().collect(),
            Step::OfType(ty) => {
                let mut out = Vec::new();
                for node in nodes {
                    let keep = match (&node.slot, node.holds) {
                        (_, Holds::Resource) => {
                            get(doc, &node.at).and_then(|v| v.get("resourceType")).and_then(Value::as_str) == Some(ty)
                        }
                        (Some(s), _) if s.choice => s.member == format!("{}{}", s.name, capitalised(ty)),
                        _ => {
                            return Err(PatchError::Unsupported(format!(
                                "ofType() on an element that is not a choice ({path})"
                            )))
                        }
                    };
                    if keep {
                        out.push(node);
                    }
                }
                out
            }
            Step::Where(conditions) => {
                let mut out = Vec::new();
                for node in nodes {
                    if matches(doc, &node, conditions, model, budget)? {
                        out.push(node);
                    }
                }
                out
            }
        };
        budget.touch(nodes.len().saturating_mul(NODE_COST))?;
    }
    Ok(nodes)
}

/// Appends to `out` the values of element `name` of `node`.
fn children(doc: &Value, node: &Node, name: &str, model: &Model, out: &mut Vec<Node>) -> Result<(), PatchError> {
    let of = type_of(doc, node, model)?;
    let Some(obj) = get(doc, &node.at).and_then(Value::as_object) else { return Ok(()) };
    let (member, elem) = match element(model, of, name)? {
        Some(e) => (name, e),
        None => match present_variant(model, of, name, obj) {
            Some(m) => (m, model.element_of(of, m).ok_or_else(|| invalid("inconsistent element table"))?),
            None => return Ok(()),
        },
    };
    let slot = Slot { parent: of, name: name.to_owned(), member: member.to_owned(), choice: elem.choice };
    let mut at = |seg: Vec<Seg>| {
        let mut path = node.at.clone();
        path.extend(seg);
        out.push(Node { at: path, holds: elem.holds, slot: Some(slot.clone()) });
    };
    match obj.get(member) {
        None => {}
        Some(Value::Array(items)) => {
            (0..items.len()).for_each(|i| at(vec![Seg::Key(member.to_owned()), Seg::Item(i)]));
        }
        Some(_) => at(vec![Seg::Key(member.to_owned())]),
    }
    Ok(())
}

/// Whether every condition of a `where(…)` holds for `node`: its path selects exactly one
/// primitive, equal to the literal.
fn matches(
    doc: &Value,
    node: &Node,
    conditions: &[Condition],
    model: &Model,
    budget: &mut Budget,
) -> Result<bool, PatchError> {
    for c in conditions {
        let mut found = vec![node.clone()];
        for name in &c.path {
            let mut next = Vec::new();
            for n in &found {
                children(doc, n, name, model, &mut next)?;
            }
            budget.touch(next.len().saturating_mul(NODE_COST))?;
            found = next;
        }
        let value = match found.as_slice() {
            [one] => get(doc, &one.at),
            _ => None,
        };
        let equal = match (value, &c.value) {
            (Some(Value::String(s)), Literal::String(l)) => s == l,
            (Some(Value::Bool(b)), Literal::Boolean(l)) => b == l,
            (Some(Value::Number(n)), Literal::Integer(l)) => n.as_i64() == Some(*l) || n.as_f64() == Some(*l as f64),
            _ => false,
        };
        if !equal {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The JSON of `value` for an element holding `holds` (a complex value's parts placed by its type).
fn materialise(value: &NewValue, holds: Holds, model: &Model) -> Result<Value, PatchError> {
    let parts = match value {
        NewValue::Typed { json, .. } => return Ok(json.clone()),
        NewValue::Parts(parts) => parts,
    };
    let Holds::Complex(of) = holds else {
        return Err(invalid("a value given as parts must be for a complex element"));
    };
    let mut obj = Map::new();
    for (name, part) in parts {
        let (member, elem) = match (element(model, of, name)?, part) {
            (Some(e), _) => (name.clone(), e),
            (None, NewValue::Typed { ty, .. }) => {
                if present_variant(model, of, name, &obj).is_some() {
                    return Err(invalid(format!("the part {name:?} appears twice")));
                }
                variant(model, of, name, ty)?
            }
            (None, NewValue::Parts(_)) => {
                return Err(invalid(format!("the choice element {name:?} needs a typed value")))
            }
        };
        let json = materialise(part, elem.holds, model)?;
        match obj.get_mut(&member) {
            Some(Value::Array(items)) if elem.many => items.push(json),
            Some(_) => return Err(invalid(format!("the part {name:?} appears twice"))),
            None if elem.many => {
                obj.insert(member, Value::Array(vec![json]));
            }
            None => {
                obj.insert(member, json);
            }
        }
    }
    Ok(Value::Object(obj))
}

/// A member's key as JSON writes it, with its colon and a comma.
fn key_size(key: &str) -> usize {
    size(&Value::String(key.to_owned())) + 2
}

/// Refuses a change to a primitive element that has a `_member` sibling (its extensions): the
/// two would fall out of line.
fn no_primitive_extensions(obj: &Map<String, Value>, member: &str) -> Result<(), PatchError> {
    if obj.contains_key(&format!("_{member}")) {
        return Err(PatchError::Unsupported(format!(
            "changing {member:?}, which has primitive extensions (_{member})"
        )));
    }
    Ok(())
}

/// Exactly one node, or the error saying how many `path` selected.
fn single(nodes: Vec<Node>, path: &Path, op: &str) -> Result<Node, PatchError> {
    let n = nodes.len();
    match <[Node; 1]>::try_from(nodes) {
        Ok([one]) => Ok(one),
        Err(_) if n == 0 => Err(invalid(format!("{op}: no element matches the path {path}"))),
        Err(_) => Err(invalid(format!("{op}: the path {path} selects {n} elements; it must select one"))),
    }
}

/// The list an `insert` or `move` works on: the path must end in a repeating element's name,
/// and what comes before it must select one element.
fn list<'d>(
    doc: &'d mut Value,
    path: &Path,
    op: &str,
    budget: &mut Budget,
) -> Result<(&'d mut Map<String, Value>, String, Holds), PatchError> {
    let model = Model::r4();
    let Some(Step::Child(name)) = path.steps.last() else {
        return Err(invalid(format!("{op}: the path {path} must end in the name of a repeating element")));
    };
    let parent = single(select(doc, path, path.steps.len() - 1, budget)?, path, op)?;
    let of = type_of(doc, &parent, model)?;
    let elem = match element(model, of, name)? {
        Some(e) if e.many => e,
        _ => return Err(invalid(format!("{op}: {name:?} is not a repeating element"))),
    };
    let obj = get_mut(doc, &parent.at).and_then(Value::as_object_mut).ok_or_else(|| invalid("not an element"))?;
    no_primitive_extensions(obj, name)?;
    Ok((obj, name.clone(), elem.holds))
}

/// Applies FHIRPath Patch operations to `doc`, one at a time, within the bounds of `limit`.
pub fn apply(doc: &mut Value, ops: &[Operation], limit: usize) -> Result<(), PatchError> {
    let mut budget = Budget::new(doc, ops.len(), limit)?;
    for (i, op) in ops.iter().enumerate() {
        apply_one(doc, op, &mut budget).map_err(|e| at_operation(i, e))?;
    }
    Ok(())
}

fn apply_one(doc: &mut Value, op: &Operation, budget: &mut Budget) -> Result<(), PatchError> {
    let model = Model::r4();
    match op {
        Operation::Add { path, name, value } => {
            let node = single(select(doc, path, path.steps.len(), budget)?, path, "add")?;
            let of = type_of(doc, &node, model)?;
            let obj = get(doc, &node.at).and_then(Value::as_object).ok_or_else(|| invalid("add: not an element"))?;
            let (member, elem) = match (element(model, of, name)?, value) {
                (Some(e), _) => (name.clone(), e),
                (None, NewValue::Typed { ty, .. }) => {
                    if present_variant(model, of, name, obj).is_some() {
                        return Err(invalid(format!("add: {name:?} cannot repeat and already has a value")));
                    }
                    variant(model, of, name, ty)?
                }
                (None, NewValue::Parts(_)) => {
                    return Err(invalid(format!("add: the choice element {name:?} needs a typed value")))
                }
            };
            no_primitive_extensions(obj, &member)?;
            let exists = obj.contains_key(&member);
            if exists && !elem.many {
                return Err(invalid(format!("add: {name:?} cannot repeat and already has a value")));
            }
            let json = materialise(value, elem.holds, model)?;
            let added = size(&json) + if exists { 1 } else { key_size(&member) + 2 };
            budget.change(added, 0)?;
            let obj =
                get_mut(doc, &node.at).and_then(Value::as_object_mut).ok_or_else(|| invalid("add: not an element"))?;
            match obj.get_mut(&member) {
                Some(Value::Array(items)) => items.push(json),
                _ if elem.many => {
                    obj.insert(member, Value::Array(vec![json]));
                }
                _ => {
                    obj.insert(member, json);
                }
            }
        }
        Operation::Insert { path, index, value } => {
            let (obj, name, holds) = list(doc, path, "insert", budget)?;
            let len = obj.get(&name).and_then(Value::as_array).map_or(0, Vec::len);
            if *index > len {
                return Err(invalid(format!(
                    "insert: index {index} is out of range for {path}, which has {len} items"
                )));
            }
            let json = materialise(value, holds, model)?;
            budget.change(size(&json) + if len == 0 { key_size(&name) + 2 } else { 1 }, 0)?;
            match obj.get_mut(&name) {
                Some(Value::Array(items)) => items.insert(*index, json),
                _ => {
                    obj.insert(name, Value::Array(vec![json]));
                }
            }
        }
        Operation::Move { path, source, destination } => {
            let (obj, name, _) = list(doc, path, "move", budget)?;
            let items = obj.get_mut(&name).and_then(Value::as_array_mut);
            let len = items.as_ref().map_or(0, |a| a.len());
            if *source >= len || *destination >= len {
                return Err(invalid(format!(
                    "move: source {source} and destination {destination} must be below {len}, the number of items of {path}"
                )));
            }
            let items = items.ok_or_else(|| invalid("move: not a list"))?;
            budget.touch(size(&items[*source]))?;
            let item = items.remove(*source);
            items.insert(*destination, item);
        }
        Operation::Delete { path } => {
            let nodes = select(doc, path, path.steps.len(), budget)?;
            if nodes.is_empty() {
                return Ok(());
            }
            let node = single(nodes, path, "delete")?;
            let Some((last, parent)) = node.at.split_last() else {
                return Err(invalid("delete: the resource itself cannot be deleted"));
            };
            let member_of = node.slot.as_ref().map(|s| s.member.as_str()).unwrap_or_default();
            let owner_at =
                if matches!(last, Seg::Item(_)) { &parent[..parent.len().saturating_sub(1)] } else { parent };
            if let Some(owner) = get(doc, owner_at).and_then(Value::as_object) {
                no_primitive_extensions(owner, member_of)?;
            }
            budget.change(0, get(doc, &node.at).map_or(0, size))?;
            remove(doc, &node.at);
        }
        Operation::Replace { path, value } => {
            let node = single(select(doc, path, path.steps.len(), budget)?, path, "replace")?;
            let Some(slot) = node.slot.clone() else {
                return Err(invalid("replace: the resource itself cannot be replaced"));
            };
            // The object holding the element: above its member (and its index, in a list).
            let up = if matches!(node.at.last(), Some(Seg::Item(_))) { 2 } else { 1 };
            let owner_at = node.at[..node.at.len().saturating_sub(up)].to_vec();
            let old = get(doc, &node.at).map_or(0, size);
            if let Some(owner) = get(doc, &owner_at).and_then(Value::as_object) {
                no_primitive_extensions(owner, &slot.member)?;
            }
            if slot.choice {
                let NewValue::Typed { ty, .. } = value else {
                    return Err(invalid(format!("replace: the choice element {:?} needs a typed value", slot.name)));
                };
                let (member, elem) = variant(model, slot.parent, &slot.name, ty)?;
                let json = materialise(value, elem.holds, model)?;
                let renamed = if member == slot.member { 0 } else { key_size(&member) };
                budget.change(size(&json) + renamed, old)?;
                let owner = get_mut(doc, &owner_at)
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| invalid("replace: not an element"))?;
                owner.shift_remove(&slot.member);
                owner.insert(member, json);
            } else {
                let json = materialise(value, node.holds, model)?;
                budget.change(size(&json), old)?;
                *get_mut(doc, &node.at).ok_or_else(|| invalid("replace: not an element"))? = json;
            }
        }
    }
    Ok(())
}

/// Removes the value at `at`, then every object or array left empty on the way up (FHIR JSON
/// has no empty elements; HAPI drops them the same way).
fn remove(doc: &mut Value, at: &[Seg]) {
    let mut at = at.to_vec();
    while let Some(last) = at.pop() {
        let Some(parent) = get_mut(doc, &at) else { return };
        match (parent, last) {
            (Value::Object(o), Seg::Key(k)) => {
                o.shift_remove(&k);
                if !o.is_empty() {
                    return;
                }
            }
            (Value::Array(a), Seg::Item(i)) if i < a.len() => {
                a.remove(i);
                if !a.is_empty() {
                    return;
                }
            }
            _ => return,
        }
        if at.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One operation parameter from `(part name, part)` pairs.
    fn op(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn params(ops: Vec<Value>) -> Value {
        json!({"resourceType": "Parameters", "parameter": ops})
    }

    fn run(doc: &mut Value, body: Value) -> Result<(), PatchError> {
        super::super::shape::check(&body).expect("the test's Parameters pass the gate");
        Patch::parse(body)?.apply(doc, 64 * 1024)
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "active": true,
            "identifier": [{"system": "s1", "value": "1"}, {"system": "s2", "value": "2"}],
            "name": [{"family": "A", "given": ["x", "y"]}, {"use": "nickname", "family": "B"}]})
    }

    fn replace(path: &str, value: Value) -> Value {
        let mut value_part = json!({"name": "value"});
        value_part.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
        op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": path}, value_part]))
    }

    fn delete(path: &str) -> Value {
        op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": path}]))
    }

    fn add(path: &str, name: &str, value: Value) -> Value {
        let mut value_part = json!({"name": "value"});
        value_part.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
        op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": path},
            {"name": "name", "valueString": name}, value_part]))
    }

    fn message(r: Result<(), PatchError>) -> String {
        r.expect_err("must be refused").to_string()
    }

    #[test]
    fn parses_the_supported_subset() {
        let p = Path::parse("Patient.identifier.where(system = 'a\\'b' and use='official')[0].value").unwrap();
        assert_eq!(p.rtype, "Patient");
        assert_eq!(
            p.steps,
            vec![
                Step::Child("identifier".into()),
                Step::Where(vec![
                    Condition { path: vec!["system".into()], value: Literal::String("a'b".into()) },
                    Condition { path: vec!["use".into()], value: Literal::String("official".into()) },
                ]),
                Step::Index(0),
                Step::Child("value".into()),
            ]
        );
        let p = Path::parse("Observation.value.ofType(FHIR.Quantity).first()").unwrap();
        assert_eq!(p.steps, vec![Step::Child("value".into()), Step::OfType("Quantity".into()), Step::First]);
        let p = Path::parse("Patient.name.last().given.where(x = 3 and y.z = true)").unwrap();
        assert_eq!(p.steps.len(), 4);
        assert_eq!(
            Path::parse("Patient.name.where(text='\\u00e9\\n')").unwrap().steps[1],
            Step::Where(vec![Condition { path: vec!["text".into()], value: Literal::String("é\n".into()) }])
        );
    }

    #[test]
    fn refuses_everything_outside_the_subset() {
        for text in [
            "Patient.name.exists()",
            "Patient.name.where(family != 'x')",
            "Patient.name.where(family = 'x' or given = 'y')",
            "Patient.name | Patient.contact",
            "Patient.name[-1]",
            "Patient.`name`",
            "Patient.name.where(family = 'x'",
            "Patient.name.where(family = 'unterminated)",
            "Patient.name.where(family = %var)",
            "Patient.name.where($this = 'x')",
            "Patient.name.single()",
            "Patient..name",
            "Patient.name[0",
            "%resource.name",
            "",
        ] {
            let e = Path::parse(text).expect_err(text);
            assert!(matches!(e, PatchError::Unsupported(_)), "{text}: {e}");
            assert!(e.to_string().starts_with("this FHIRPath expression is not supported by fhir-fence"), "{e}");
        }
        assert!(Path::parse(&format!("Patient{}", ".name".repeat(300))).is_err(), "longer than the bound");
    }

    #[test]
    fn replace_follows_types_and_choices() {
        let mut doc = patient();
        run(&mut doc, params(vec![replace("Patient.name[0].family", json!({"valueString": "Z"}))])).unwrap();
        assert_eq!(doc["name"][0]["family"], "Z");
        run(
            &mut doc,
            params(vec![replace("Patient.name.where(use = 'nickname').family", json!({"valueString": "N"}))]),
        )
        .unwrap();
        assert_eq!(doc["name"][1]["family"], "N");
        run(&mut doc, params(vec![replace("Patient.active", json!({"valueBoolean": false}))])).unwrap();
        assert_eq!(doc["active"], false);
        // a whole list item
        run(&mut doc, params(vec![replace("Patient.identifier[1]", json!({"valueIdentifier": {"value": "9"}}))]))
            .unwrap();
        assert_eq!(doc["identifier"][1], json!({"value": "9"}));
        // a choice element changes its variant
        let mut obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "c"},
            "valueQuantity": {"value": 1}});
        run(&mut obs, params(vec![replace("Observation.value", json!({"valueString": "high"}))])).unwrap();
        assert_eq!(
            obs,
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "c"}, "valueString": "high"})
        );
        run(&mut obs, params(vec![replace("Observation.value.ofType(string)", json!({"valueInteger": 3}))])).unwrap();
        assert_eq!(obs["valueInteger"], 3);
        assert!(message(run(
            &mut obs,
            params(vec![replace("Observation.value", json!({"valueHumanName": {"text": "x"}}))])
        ))
        .contains("cannot hold a value of type HumanName"));
        // nothing, or more than one
        assert!(message(run(&mut patient(), params(vec![replace("Patient.gender", json!({"valueCode": "male"}))])))
            .contains("no element matches"));
        assert!(message(run(
            &mut patient(),
            params(vec![replace("Patient.name.family", json!({"valueString": "x"}))])
        ))
        .contains("selects 2 elements"));
        assert!(message(run(&mut patient(), params(vec![replace("Patient.nope", json!({"valueString": "x"}))])))
            .contains("no element \"nope\""));
        assert!(message(run(&mut patient(), params(vec![replace("Observation.status", json!({"valueCode": "x"}))])))
            .contains("does not start with the resource's type"));
    }

    #[test]
    fn add_appends_to_lists_and_fills_empty_elements() {
        let mut doc = patient();
        let body = params(vec![
            add("Patient", "telecom", json!({"valueContactPoint": {"system": "phone", "value": "1"}})),
            add("Patient", "telecom", json!({"valueContactPoint": {"system": "email", "value": "e"}})),
            add("Patient", "gender", json!({"valueCode": "female"})),
            add("Patient", "multipleBirth", json!({"valueInteger": 2})),
            add("Patient.name[0]", "given", json!({"valueString": "z"})),
            add(
                "Patient",
                "contact",
                json!({"part": [{"name": "name", "valueHumanName": {"family": "C"}},
                {"name": "relationship", "valueCodeableConcept": {"text": "r"}},
                {"name": "relationship", "valueCodeableConcept": {"text": "s"}}]}),
            ),
        ]);
        run(&mut doc, body).unwrap();
        assert_eq!(doc["telecom"], json!([{"system": "phone", "value": "1"}, {"system": "email", "value": "e"}]));
        assert_eq!(doc["gender"], "female");
        assert_eq!(doc["multipleBirthInteger"], 2);
        assert_eq!(doc["name"][0]["given"], json!(["x", "y", "z"]));
        assert_eq!(doc["contact"], json!([{"name": {"family": "C"}, "relationship": [{"text": "r"}, {"text": "s"}]}]));
        super::super::shape::check(&doc).unwrap();
        // a single element with a value, a second variant, an unknown element
        assert!(message(run(&mut doc, params(vec![add("Patient", "gender", json!({"valueCode": "male"}))])))
            .contains("cannot repeat and already has a value"));
        assert!(message(run(&mut doc, params(vec![add("Patient", "multipleBirth", json!({"valueBoolean": true}))])))
            .contains("cannot repeat"));
        assert!(
            message(run(&mut doc, params(vec![add("Patient", "nope", json!({"valueString": "x"}))]))).contains("nope")
        );
        assert!(message(run(&mut doc, params(vec![add("Patient.contact", "name", json!({"valueString": "x"}))])))
            .contains("cannot repeat"));
        assert!(message(run(&mut doc, params(vec![add("Patient.name", "text", json!({"valueString": "x"}))])))
            .contains("selects 2 elements"));
    }

    #[test]
    fn insert_and_move_work_on_lists() {
        let mut doc = patient();
        let insert = op(
            json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"},
            {"name": "index", "valueInteger": 0}, {"name": "value", "valueIdentifier": {"system": "s0", "value": "0"}}]),
        );
        let insert_given = op(json!([{"name": "type", "valueCode": "insert"},
            {"name": "path", "valueString": "Patient.name[1].given"},
            {"name": "index", "valueInteger": 0}, {"name": "value", "valueString": "g"}]));
        let mv =
            op(json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.identifier"},
            {"name": "source", "valueInteger": 2}, {"name": "destination", "valueInteger": 0}]));
        run(&mut doc, params(vec![insert, insert_given, mv])).unwrap();
        let systems: Vec<&str> =
            doc["identifier"].as_array().unwrap().iter().map(|i| i["system"].as_str().unwrap()).collect();
        assert_eq!(systems, ["s2", "s0", "s1"]);
        assert_eq!(doc["name"][1]["given"], json!(["g"]));
        let out_of_range =
            op(json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"},
            {"name": "index", "valueInteger": 4}, {"name": "value", "valueIdentifier": {"value": "0"}}]));
        assert!(message(run(&mut doc, params(vec![out_of_range]))).contains("index 4 is out of range"));
        let bad_move =
            op(json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.identifier"},
            {"name": "source", "valueInteger": 0}, {"name": "destination", "valueInteger": 3}]));
        assert!(message(run(&mut doc, params(vec![bad_move]))).contains("must be below 3"));
        let not_a_list =
            op(json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.gender"},
            {"name": "index", "valueInteger": 0}, {"name": "value", "valueCode": "male"}]));
        assert!(message(run(&mut doc, params(vec![not_a_list]))).contains("not a repeating element"));
        let filtered =
            op(json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.identifier[0]"},
            {"name": "source", "valueInteger": 0}, {"name": "destination", "valueInteger": 0}]));
        assert!(message(run(&mut doc, params(vec![filtered]))).contains("must end in the name"));
    }

    #[test]
    fn delete_removes_one_node_and_empty_parents() {
        let mut doc = patient();
        run(&mut doc, params(vec![delete("Patient.identifier.where(system='s1')"), delete("Patient.gender")])).unwrap();
        assert_eq!(doc["identifier"], json!([{"system": "s2", "value": "2"}]));
        run(&mut doc, params(vec![delete("Patient.name[1].family"), delete("Patient.name[1].use")])).unwrap();
        assert_eq!(doc["name"].as_array().unwrap().len(), 1, "the emptied name is gone: {doc}");
        run(&mut doc, params(vec![delete("Patient.identifier")])).unwrap();
        assert!(doc.get("identifier").is_none(), "{doc}");
        assert!(message(run(&mut doc, params(vec![delete("Patient.name.given")]))).contains("selects 2 elements"));
        assert!(message(run(&mut doc, params(vec![delete("Patient")]))).contains("resource itself"));
        super::super::shape::check(&doc).unwrap();
    }

    #[test]
    fn refuses_malformed_operations() {
        let cases = [
            (params(vec![json!({"name": "foo", "valueString": "x"})]), "unknown patch parameter"),
            (
                params(vec![op(
                    json!([{"name": "type", "valueCode": "bogus"}, {"name": "path", "valueString": "Patient"}]),
                )]),
                "unknown patch operation type \"bogus\"",
            ),
            (params(vec![op(json!([{"name": "type", "valueCode": "delete"}]))]), "needs a path"),
            (
                params(vec![op(
                    json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                {"name": "value", "valueString": "x"}]),
                )]),
                "needs a name",
            ),
            (
                params(vec![op(
                    json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.gender"},
                {"name": "value", "valueString": "x"}]),
                )]),
                "takes no value",
            ),
            (
                params(vec![op(
                    json!([{"name": "type", "valueCode": "delete"}, {"name": "type", "valueCode": "delete"},
                {"name": "path", "valueString": "Patient.gender"}]),
                )]),
                "appears twice",
            ),
            (
                params(vec![op(
                    json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.active"},
                {"name": "value", "valueBoolean": true, "_valueBoolean": {"id": "x"}}]),
                )]),
                "primitive extensions",
            ),
            (params(vec![add("Patient", "contact", json!({"part": [{"name": "nope", "valueString": "x"}]}))]), "nope"),
        ];
        for (body, expected) in cases {
            let e = message(run(&mut patient(), body.clone()));
            assert!(e.contains(expected), "{body}: {e}");
        }
        assert!(matches!(Patch::parse(json!({"resourceType": "Patient"})), Err(PatchError::Malformed(_))));
        assert!(matches!(Patch::parse(json!([{"op": "nope"}])), Err(PatchError::Malformed(_))));
        // a primitive with extensions is not changed out of line with them
        let mut doc =
            json!({"resourceType": "Patient", "name": [{"given": ["a", "b"], "_given": [null, {"id": "x"}]}]});
        assert!(message(run(&mut doc, params(vec![delete("Patient.name.given[0]")]))).contains("primitive extensions"));
    }

    #[test]
    fn bounds_are_those_of_json_patch() {
        let ops: Vec<Value> = (0..=MAX_OPERATIONS).map(|_| delete("Patient.gender")).collect();
        assert_eq!(Patch::parse(params(ops)).unwrap_err(), PatchError::TooManyOperations(MAX_OPERATIONS + 1));
        // each add grows the document: refused before it passes the limit
        let big = "x".repeat(1000);
        let ops: Vec<Value> =
            (0..40).map(|_| add("Patient", "address", json!({"valueAddress": {"text": big}}))).collect();
        let mut doc = patient();
        let limit = 16 * 1024;
        assert_eq!(Patch::parse(params(ops)).unwrap().apply(&mut doc, limit), Err(PatchError::TooLarge(limit)));
        assert!(size(&doc) <= limit, "{}", size(&doc));
        // replaces that never grow the document still cost their bytes
        let ops: Vec<Value> =
            (0..100).map(|_| replace("Patient.name[0].family", json!({"valueString": big}))).collect();
        assert_eq!(
            Patch::parse(params(ops.clone())).unwrap().apply(&mut patient(), limit),
            Err(PatchError::TooMuchWork(4 * limit))
        );
        Patch::parse(params(ops[..20].to_vec())).unwrap().apply(&mut patient(), limit).unwrap();
        // the size bound stays an upper bound through deletes and replaces
        let mut doc = patient();
        let ops = vec![
            replace("Patient.name[0].family", json!({"valueString": big})),
            delete("Patient.name[0].family"),
            add("Patient", "address", json!({"valueAddress": {"text": big}})),
        ];
        Patch::parse(params(ops)).unwrap().apply(&mut doc, 2048).unwrap();
        assert!(size(&doc) <= 2048);
    }

    #[test]
    fn contained_resources_are_typed_by_their_resource_type() {
        let mut doc =
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "name": "x"}]});
        run(
            &mut doc,
            params(vec![replace("Patient.contained.ofType(Organization).name", json!({"valueString": "y"}))]),
        )
        .unwrap();
        assert_eq!(doc["contained"][0]["name"], "y");
        assert!(message(run(
            &mut doc,
            params(vec![replace("Patient.contained.name.family", json!({"valueString": "y"}))])
        ))
        .contains("inside a primitive"));
    }
}
