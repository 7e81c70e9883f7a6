//! The compatibility rules, against hand-written expectations: first on schemas schemars
//! derives from Rust types (writer schemas as serde serializes, reader schemas as it
//! deserializes), then as a property: a random event schema, plus one generated change on
//! the writer's or the reader's side, is judged exactly as the change's expectation says,
//! both by [`fit`] and by the lock comparison.

use std::collections::BTreeMap;

use busbar_domain::contracts::{Lock, Reason, ServiceContract, TypeSchema, evolution, fit, fit::Mismatch};
use proptest::{prelude::*, sample::Index};
use schemars::{JsonSchema, generate::SchemaSettings};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

fn writer<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12().for_serialize().into_generator().into_root_schema_for::<T>().to_value()
}

fn reader<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12().for_deserialize().into_generator().into_root_schema_for::<T>().to_value()
}

fn reasons(found: &[Mismatch]) -> Vec<(String, &'static str)> {
    found.iter().map(|m| (m.path.clone(), reason_name(&m.reason))).collect()
}

fn reason_name(r: &Reason) -> &'static str {
    match r {
        Reason::Missing => "Missing",
        Reason::Optional => "Optional",
        Reason::Refused => "Refused",
        Reason::Nullable => "Nullable",
        Reason::Kind { .. } => "Kind",
        Reason::Value { .. } => "Value",
        Reason::Range { .. } => "Range",
        Reason::Format { .. } => "Format",
        Reason::Length { .. } => "Length",
        Reason::Unsupported(_) => "Unsupported",
    }
}

/// Types that exist for their schemas: nothing reads their fields.
#[allow(dead_code)]
mod rust_types {
    use super::*;

    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Status {
        Pending,
        Approved,
        Rejected,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum OldStatus {
        Pending,
        Approved,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Author {
        pub name: String,
    }

    /// What a publisher writes.
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Written {
        pub id: String,
        pub post_id: String,
        pub status: Status,
        pub note: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub author: Option<Author>,
        pub count: u32,
        pub tags: Vec<String>,
    }

    /// A reader that needs only the id.
    #[derive(Deserialize, JsonSchema)]
    pub struct IdOnly {
        pub id: String,
    }

    /// A reader that needs the author (which the writer may leave out).
    #[derive(Deserialize, JsonSchema)]
    pub struct NeedsAuthor {
        pub id: String,
        pub author: Author,
    }

    /// A reader that needs the note as a string (the writer may send null).
    #[derive(Deserialize, JsonSchema)]
    pub struct NeedsNote {
        pub note: String,
    }

    /// A reader whose enum is narrower, whose count is smaller, and that refuses the rest.
    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    pub struct Strict {
        pub id: String,
        pub post_id: String,
        pub status: OldStatus,
        pub note: Option<String>,
        pub count: u8,
    }

    /// A reader with a default for a field the writer does not have, and a tolerant note.
    #[derive(Deserialize, JsonSchema)]
    #[serde(rename_all = "camelCase")]
    pub struct Defaulted {
        pub post_id: String,
        #[serde(default)]
        pub title: String,
        pub note: Option<String>,
        pub tags: Vec<String>,
    }
}

#[test]
fn rules_on_schemas_derived_from_rust_types() {
    use rust_types::*;
    let w = writer::<Written>();
    assert!(fit(&w, &reader::<IdOnly>()).is_empty(), "a reader may need less");
    assert!(fit(&w, &reader::<Defaulted>()).is_empty(), "a defaulted field need not be sent");
    // The writer schema of a skipped `Option` says both: it may be missing, and (as far as
    // the schema knows) null.
    assert_eq!(
        reasons(&fit(&w, &reader::<NeedsAuthor>())),
        [("author".to_owned(), "Optional"), ("author".to_owned(), "Nullable")]
    );
    assert_eq!(reasons(&fit(&w, &reader::<NeedsNote>())), [("note".to_owned(), "Nullable")]);
    let mut strict = reasons(&fit(&w, &reader::<Strict>()));
    strict.sort();
    assert_eq!(
        strict,
        [
            ("author".to_owned(), "Refused"),
            ("count".to_owned(), "Range"),
            ("status".to_owned(), "Value"),
            ("tags".to_owned(), "Refused"),
        ]
    );
}

#[test]
fn the_writer_schema_is_what_serde_writes_not_what_it_reads() {
    // `Option` without skip_serializing_if is always written (as null): required in the
    // writer schema, optional in the reader schema.
    let w = writer::<rust_types::Written>();
    let required: Vec<&str> = w["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(required.contains(&"note") && !required.contains(&"author"), "{required:?}");
    let r = reader::<rust_types::Written>();
    let required: Vec<&str> = r["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(!required.contains(&"note"), "{required:?}");
}

// ---- The property ----

#[derive(Clone, Debug, PartialEq)]
enum Ty {
    Str,
    Int(&'static str),
    Bool,
    Enum(Vec<&'static str>),
    Obj(Obj),
    List(Box<Ty>),
    Null(Box<Ty>),
}

#[derive(Clone, Debug, PartialEq)]
struct Field {
    name: String,
    ty: Ty,
    required: bool,
}

#[derive(Clone, Debug, PartialEq, Default)]
struct Obj {
    fields: Vec<Field>,
    closed: bool,
}

const VALUES: [&str; 4] = ["a", "b", "c", "d"];

/// Renders the model as schemars would: nested objects in `$defs`, nullable primitives as a
/// `type` array, other nullables as `anyOf`.
fn render(root: &Obj) -> Value {
    let mut defs = serde_json::Map::new();
    let mut schema = object(root, &mut defs);
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    schema
}

fn object(o: &Obj, defs: &mut serde_json::Map<String, Value>) -> Value {
    let props: serde_json::Map<String, Value> = o.fields.iter().map(|f| (f.name.clone(), ty(&f.ty, defs))).collect();
    let required: Vec<&str> = o.fields.iter().filter(|f| f.required).map(|f| f.name.as_str()).collect();
    let mut s = json!({"type": "object", "properties": props, "required": required});
    if o.closed {
        s["additionalProperties"] = json!(false);
    }
    s
}

fn ty(t: &Ty, defs: &mut serde_json::Map<String, Value>) -> Value {
    match t {
        Ty::Str => json!({"type": "string"}),
        Ty::Int("uint8") => json!({"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255}),
        Ty::Int("uint32") => json!({"type": "integer", "format": "uint32", "minimum": 0}),
        Ty::Int(f) => json!({"type": "integer", "format": f}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Enum(vs) => json!({"type": "string", "enum": vs}),
        Ty::Obj(o) => {
            let name = format!("D{}", defs.len());
            defs.insert(name.clone(), Value::Null);
            let rendered = object(o, defs);
            defs.insert(name.clone(), rendered);
            json!({"$ref": format!("#/$defs/{name}")})
        }
        Ty::List(items) => json!({"type": "array", "items": ty(items, defs)}),
        Ty::Null(inner) => match inner.as_ref() {
            Ty::Str | Ty::Int(_) | Ty::Bool => {
                let mut s = ty(inner, defs);
                let t = s["type"].clone();
                s["type"] = json!([t, "null"]);
                s
            }
            other => json!({"anyOf": [ty(other, defs), {"type": "null"}]}),
        },
    }
}

fn leaf() -> impl Strategy<Value = Ty> {
    prop_oneof![
        Just(Ty::Str),
        prop_oneof![Just("uint8"), Just("uint32"), Just("int64")].prop_map(Ty::Int),
        Just(Ty::Bool),
        proptest::sample::subsequence(VALUES.to_vec(), 1..=3).prop_map(Ty::Enum),
    ]
}

fn any_ty(depth: u32) -> BoxedStrategy<Ty> {
    if depth == 0 {
        return leaf().boxed();
    }
    prop_oneof![
        4 => leaf(),
        1 => any_obj(depth - 1).prop_map(Ty::Obj),
        1 => any_ty(depth - 1).prop_map(|t| Ty::List(Box::new(t))),
        1 => leaf().prop_map(|t| Ty::Null(Box::new(t))),
        1 => any_obj(depth - 1).prop_map(|o| Ty::Null(Box::new(Ty::Obj(o)))),
    ]
    .boxed()
}

fn any_obj(depth: u32) -> BoxedStrategy<Obj> {
    proptest::collection::vec((any_ty(depth), any::<bool>()), 1..5)
        .prop_map(|fields| Obj {
            fields: fields
                .into_iter()
                .enumerate()
                .map(|(i, (ty, required))| Field { name: format!("f{i}"), ty, required })
                .collect(),
            closed: false,
        })
        .boxed()
}

/// Where an object sits in the tree: the path of field indexes to it, and how a mismatch
/// inside it is named (`f1.f0`, `f2[].f0`).
#[derive(Clone, Debug)]
struct Location {
    steps: Vec<usize>,
    path: String,
}

fn locations(o: &Obj, here: Location, out: &mut Vec<Location>) {
    out.push(here.clone());
    for (i, f) in o.fields.iter().enumerate() {
        let mut t = &f.ty;
        let mut name = if here.path.is_empty() { f.name.clone() } else { format!("{}.{}", here.path, f.name) };
        loop {
            match t {
                Ty::List(inner) => {
                    name.push_str("[]");
                    t = inner;
                }
                Ty::Null(inner) => t = inner,
                _ => break,
            }
        }
        if let Ty::Obj(inner) = t {
            let mut steps = here.steps.clone();
            steps.push(i);
            locations(inner, Location { steps, path: name }, out);
        }
    }
}

fn at<'a>(o: &'a mut Obj, steps: &[usize]) -> &'a mut Obj {
    let Some((first, rest)) = steps.split_first() else { return o };
    let mut t = &mut o.fields[*first].ty;
    loop {
        match t {
            Ty::List(inner) | Ty::Null(inner) => t = inner,
            Ty::Obj(inner) => return at(inner, rest),
            _ => unreachable!("locations point at objects"),
        }
    }
}

/// What the rules must say about a change.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Fits,
    /// Exactly one mismatch: at this field, for this reason.
    Breaks(String, &'static str),
}

#[derive(Clone, Copy, Debug)]
enum Change {
    // On the writer's side (the reader is the schema as it was).
    AddField { required: bool },
    RemoveField,
    MakeOptional,
    RenameField,
    WidenEnum,
    NarrowEnum,
    Retype,
    WidenInt,
    NarrowInt,
    MakeNullable,
    // On the reader's side (the writer is the schema as it was).
    ReaderDropsField,
    ReaderRequiresNew,
    ReaderMakesOptional,
    ReaderRefusesUnknown,
    ReaderNarrowsEnum,
    ReaderWidensEnum,
}

const CHANGES: [Change; 16] = [
    Change::AddField { required: false },
    Change::RemoveField,
    Change::MakeOptional,
    Change::RenameField,
    Change::WidenEnum,
    Change::NarrowEnum,
    Change::Retype,
    Change::WidenInt,
    Change::NarrowInt,
    Change::MakeNullable,
    Change::ReaderDropsField,
    Change::ReaderRequiresNew,
    Change::ReaderMakesOptional,
    Change::ReaderRefusesUnknown,
    Change::ReaderNarrowsEnum,
    Change::ReaderWidensEnum,
];

impl Change {
    fn on_reader(self) -> bool {
        matches!(
            self,
            Change::ReaderDropsField
                | Change::ReaderRequiresNew
                | Change::ReaderMakesOptional
                | Change::ReaderRefusesUnknown
                | Change::ReaderNarrowsEnum
                | Change::ReaderWidensEnum
        )
    }

    /// Whether the change applies to this field.
    fn eligible(self, f: &Field) -> bool {
        match self {
            Change::AddField { .. } | Change::ReaderRequiresNew => true,
            Change::RemoveField | Change::RenameField | Change::ReaderDropsField | Change::ReaderRefusesUnknown => true,
            Change::MakeOptional | Change::ReaderMakesOptional => f.required,
            Change::WidenEnum | Change::ReaderWidensEnum => matches!(&f.ty, Ty::Enum(v) if v.len() < VALUES.len()),
            Change::NarrowEnum | Change::ReaderNarrowsEnum => matches!(&f.ty, Ty::Enum(v) if v.len() >= 2),
            Change::Retype => matches!(f.ty, Ty::Str | Ty::Int(_) | Ty::Bool),
            Change::WidenInt => f.ty == Ty::Int("uint8"),
            Change::NarrowInt => matches!(f.ty, Ty::Int("uint32" | "int64")),
            Change::MakeNullable => matches!(f.ty, Ty::Str | Ty::Int(_) | Ty::Bool | Ty::Enum(_)),
        }
    }

    /// Applies the change to `o` (an object of the side it changes) at field `i`, and says
    /// what the rules must find, given the field's name as a path.
    fn apply(self, o: &mut Obj, i: usize, path: &str) -> Expect {
        let fresh = format!("g{}", o.fields.len());
        let named = |n: &str| if path.is_empty() { n.to_owned() } else { format!("{path}.{n}") };
        let f = o.fields[i].clone();
        let at_f = named(&f.name);
        let breaks = |reason| Expect::Breaks(at_f.clone(), reason);
        match self {
            Change::AddField { required } => {
                o.fields.push(Field { name: fresh, ty: Ty::Str, required });
                Expect::Fits
            }
            Change::RemoveField => {
                o.fields.remove(i);
                if f.required { breaks("Missing") } else { Expect::Fits }
            }
            Change::RenameField => {
                o.fields[i].name = fresh;
                if f.required { breaks("Missing") } else { Expect::Fits }
            }
            Change::MakeOptional => {
                o.fields[i].required = false;
                breaks("Optional")
            }
            Change::WidenEnum => {
                let Ty::Enum(v) = &mut o.fields[i].ty else { unreachable!() };
                v.push(VALUES.iter().find(|x| !v.contains(x)).unwrap());
                breaks("Value")
            }
            Change::NarrowEnum => {
                let Ty::Enum(v) = &mut o.fields[i].ty else { unreachable!() };
                v.pop();
                Expect::Fits
            }
            Change::Retype => {
                o.fields[i].ty = if f.ty == Ty::Str { Ty::Int("int64") } else { Ty::Str };
                breaks("Kind")
            }
            Change::WidenInt => {
                o.fields[i].ty = Ty::Int("uint32");
                breaks("Range")
            }
            Change::NarrowInt => {
                o.fields[i].ty = Ty::Int("uint8");
                Expect::Fits
            }
            Change::MakeNullable => {
                o.fields[i].ty = Ty::Null(Box::new(f.ty));
                breaks("Nullable")
            }
            Change::ReaderDropsField => {
                o.fields.remove(i);
                Expect::Fits
            }
            Change::ReaderRequiresNew => {
                o.fields.push(Field { name: fresh.clone(), ty: Ty::Str, required: true });
                Expect::Breaks(named(&fresh), "Missing")
            }
            Change::ReaderMakesOptional => {
                o.fields[i].required = false;
                Expect::Fits
            }
            Change::ReaderRefusesUnknown => {
                o.fields.remove(i);
                o.closed = true;
                breaks("Refused")
            }
            Change::ReaderNarrowsEnum => {
                let Ty::Enum(v) = &mut o.fields[i].ty else { unreachable!() };
                v.pop();
                breaks("Value")
            }
            Change::ReaderWidensEnum => {
                let Ty::Enum(v) = &mut o.fields[i].ty else { unreachable!() };
                v.push(VALUES.iter().find(|x| !v.contains(x)).unwrap());
                Expect::Fits
            }
        }
    }
}

/// One posts → query edge with these schemas, as a lock.
fn edge_lock(w: &Value, r: &Value) -> Lock {
    let one = |s: &Value| [("PostCreated".to_owned(), TypeSchema::new(s.clone()))].into();
    Lock::new(BTreeMap::from([
        ("posts".to_owned(), ServiceContract { publishes: one(w), subscribes: BTreeMap::new() }),
        ("query".to_owned(), ServiceContract { publishes: BTreeMap::new(), subscribes: one(r) }),
    ]))
}

fn edge_spec() -> busbar_domain::spec::ServiceBusSpec {
    busbar_domain::spec::parse_manifest(
        "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec:\n  services:\n  - {name: posts, publishes: [PostCreated]}\n  - {name: query, port: 1, subscribes: [{type: PostCreated}]}\n",
    )
    .unwrap()
    .spec
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any schema fits itself.
    #[test]
    fn a_schema_fits_itself(o in any_obj(2)) {
        let s = render(&o);
        prop_assert_eq!(reasons(&fit(&s, &s)), vec![]);
    }

    /// A change is judged as its expectation says, by the rules and by the lock comparison.
    #[test]
    fn a_change_is_judged_as_expected(base in any_obj(2), where_ in any::<Index>(), which in any::<Index>(), field in any::<Index>()) {
        let mut places = vec![];
        locations(&base, Location { steps: vec![], path: String::new() }, &mut places);
        let place = where_.get(&places).clone();
        let target = at(&mut base.clone(), &place.steps).clone();
        // A change that fits some field there (adding a field always does).
        let mut change = *which.get(&CHANGES);
        let eligible: Vec<usize> = (0..target.fields.len()).filter(|i| change.eligible(&target.fields[*i])).collect();
        if eligible.is_empty() {
            change = Change::AddField { required: which.index(2) == 1 };
        }
        let i = if eligible.is_empty() { 0 } else { *field.get(&eligible) };
        let (mut w, mut r) = (base.clone(), base.clone());
        let side = if change.on_reader() { &mut r } else { &mut w };
        let expect = change.apply(at(side, &place.steps), i, &place.path);
        let (ws, rs) = (render(&w), render(&r));

        let found = reasons(&fit(&ws, &rs));
        match &expect {
            Expect::Fits => prop_assert_eq!(found, vec![], "{:?} at {:?}", change, place.path),
            Expect::Breaks(path, reason) => {
                prop_assert_eq!(found, vec![(path.clone(), *reason)], "{:?} at {:?}", change, place.path)
            }
        }

        // The same change as a lock against the one before it.
        let before = render(&base);
        let changes = evolution::compare(&edge_spec(), &edge_lock(&before, &before), &edge_lock(&ws, &rs));
        prop_assert_eq!(changes.len(), 1);
        prop_assert_eq!(changes[0].safe(), expect == Expect::Fits, "{}", changes[0]);
    }
}
