//! A YAML document as a tree whose every node knows its line, built from
//! yaml-rust2's event parser (a YAML 1.2 parser), so that an error in a
//! `.prompty` file's front matter can name the line it is on.
//!
//! Plain scalars are typed by the YAML 1.2 core schema (`null`, `true`,
//! `12`, `0.5`); quoted and block scalars are strings. Tags are ignored.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys in the order written.
    Map(Vec<(Node, Node)>),
}

/// A value and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub line: usize,
}

/// Why a text is not YAML, and the 1-based line.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub line: usize,
    pub why: String,
}

impl Node {
    /// The scalar as written, for messages (`0.5`, `hot`).
    pub fn shown(&self) -> String {
        match &self.value {
            Value::Null => "null".into(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Str(s) => s.clone(),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value as JSON (a mapping's keys as their text).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(v) => J::Array(v.iter().map(Node::to_json).collect()),
            Value::Map(pairs) => J::Object(
                pairs
                    .iter()
                    .map(|(k, v)| (k.shown(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Parses one YAML document. `first_line` is the line of the file the
/// text starts on, so lines are the file's. An empty document is `Null`.
pub fn parse(text: &str, first_line: usize) -> Result<Node, SyntaxError> {
    let mut b = Builder {
        first_line,
        stack: Vec::new(),
        root: None,
        anchors: HashMap::new(),
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut b, false).map_err(|e| SyntaxError {
        line: e.marker().line() + first_line - 1,
        why: e.info().to_string(),
    })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(b.root.unwrap_or(Node {
        value: Value::Null,
        line: first_line,
    }))
}

enum Frame {
    Seq(Node, usize),
    Map(Node, Option<Node>, usize),
}

struct Builder {
    first_line: usize,
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn line(&self, mark: &Marker) -> usize {
        mark.line() + self.first_line - 1
    }

    fn complete(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(seq, _)) => {
                if let Value::Seq(v) = &mut seq.value {
                    v.push(node);
                }
            }
            Some(Frame::Map(map, pending, _)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    if let Value::Map(pairs) = &mut map.value {
                        let dup = key.as_str().is_some()
                            && pairs.iter().any(|(k, _)| k.as_str() == key.as_str());
                        if dup && self.error.is_none() {
                            self.error = Some(SyntaxError {
                                line: key.line,
                                why: format!("`{}` is given twice", key.shown()),
                            });
                        }
                        pairs.push((key, node));
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = self.line(&mark);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == TScalarStyle::Plain {
                    plain(text)
                } else {
                    Value::Str(text)
                };
                self.complete(Node { value, line }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(
                Node {
                    value: Value::Seq(Vec::new()),
                    line,
                },
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map(
                Node {
                    value: Value::Map(Vec::new()),
                    line,
                },
                None,
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(node, anchor) | Frame::Map(node, _, anchor)) => {
                    self.complete(node, anchor)
                }
                None => {}
            },
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    value: Value::Null,
                    line,
                });
                self.complete(Node { line, ..node }, 0);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// A plain scalar typed by the YAML 1.2 core schema.
fn plain(text: String) -> Value {
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
    } else if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    } else if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return Value::Int(i);
    }
    let float_shape = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if float_shape && let Ok(f) = text.parse::<f64>() {
        return Value::Float(f);
    }
    Value::Str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_know_their_lines_and_scalars_their_types() {
        let doc = parse(
            "name: x\nmodel:\n  parameters:\n    temperature: 0.2\n    max_tokens: 128\n    stop: [\"\\n\", 'END']\nquoted: \"12\"\nempty:\n",
            2,
        )
        .unwrap();
        let p = doc.get("model").unwrap().get("parameters").unwrap();
        assert_eq!(p.line, 5);
        let t = p.get("temperature").unwrap();
        assert_eq!((t.line, &t.value), (5, &Value::Float(0.2)));
        assert_eq!(p.get("max_tokens").unwrap().value, Value::Int(128));
        assert_eq!(
            p.get("stop").unwrap().to_json(),
            serde_json::json!(["\n", "END"])
        );
        assert_eq!(doc.get("quoted").unwrap().value, Value::Str("12".into()));
        assert_eq!(doc.get("empty").unwrap().value, Value::Null);
        assert_eq!(doc.get("name").unwrap().line, 2);
    }

    #[test]
    fn syntax_errors_and_duplicate_keys_name_the_line() {
        let e = parse("a: 1\nb: [1, 2\n", 2).unwrap_err();
        assert_eq!(e.line, 4, "{e:?}");
        let e = parse("a: 1\nb: 2\na: 3\n", 2).unwrap_err();
        assert_eq!(
            e,
            SyntaxError {
                line: 4,
                why: "`a` is given twice".into()
            }
        );
    }

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        for (text, want) in [
            ("~", Value::Null),
            ("True", Value::Bool(true)),
            ("-7", Value::Int(-7)),
            ("0x1f", Value::Int(31)),
            ("1e3", Value::Float(1000.0)),
            ("inf", Value::Str("inf".into())),
            ("1.2.3", Value::Str("1.2.3".into())),
            ("gpt-4", Value::Str("gpt-4".into())),
        ] {
            assert_eq!(plain(text.to_string()), want, "{text}");
        }
    }
}
