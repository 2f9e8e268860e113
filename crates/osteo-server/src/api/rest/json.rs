//! The JSON body of the Open Inference Protocol's HTTP/REST infer request and response, with
//! Triton's binary tensor data extension: a request body may be the JSON header
//! (`Inference-Header-Content-Length` bytes) followed by the inputs whose `binary_data_size`
//! parameter is set, in order; outputs asked for with `binary_data` come back the same way.
//! Requests are converted to the gRPC message, so both protocols share one set of checks.

use crate::error::ServerError;
use osteo_proto::inference as v2;
use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// The request header naming the length of the JSON part of a binary request body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The element type of every tensor here.
const FP32: &str = "FP32";

/// A tensor's elements, from a flat or nested JSON array of numbers, without building a
/// JSON value per element.
#[derive(Debug, Default)]
struct Elements(Vec<f32>);

thread_local! {
    /// Values the request being parsed on this thread may still carry (see [`parse`]); None
    /// once it asked for more.
    static VALUES_LEFT: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(Some(usize::MAX)) };
}

/// Takes `n` values from the request's allowance; false (and the allowance spent for good)
/// when it does not hold them.
fn take_values(n: usize) -> bool {
    VALUES_LEFT.with(|left| {
        left.set(left.get().and_then(|l| l.checked_sub(n)));
        left.get().is_some()
    })
}

/// Appends the numbers of a (nested) array to a vector.
struct Flatten<'a>(&'a mut Vec<f32>);

impl Flatten<'_> {
    /// Appends one value, if the request's allowance holds it.
    fn push<E: serde::de::Error>(&mut self, v: f32) -> Result<(), E> {
        if !take_values(1) {
            return Err(E::custom("too many values"));
        }
        self.0.push(v);
        Ok(())
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number or an array of numbers")
    }

    fn visit_f64<E: serde::de::Error>(mut self, v: f64) -> Result<(), E> {
        self.push(v as f32)
    }

    fn visit_i64<E: serde::de::Error>(mut self, v: i64) -> Result<(), E> {
        self.push(v as f32)
    }

    fn visit_u64<E: serde::de::Error>(mut self, v: u64) -> Result<(), E> {
        self.push(v as f32)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Flatten(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Deserialize<'de> for Elements {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = Vec::new();
        d.deserialize_any(Flatten(&mut out))?;
        Ok(Elements(out))
    }
}

/// A JSON array or object of at most `N` entries, refused as it is read: a request cannot make
/// the server build thousands of entries before the count is checked.
#[derive(Debug)]
struct Bounded<T, const N: usize>(T);

impl<T, const N: usize> Default for Bounded<T, N>
where
    T: Default,
{
    fn default() -> Self {
        Bounded(T::default())
    }
}

/// Visits a sequence into a vector of at most `N` elements.
struct SeqAtMost<T, const N: usize>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for SeqAtMost<T, N> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of at most {N} entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element()? {
            if out.len() == N {
                return Err(serde::de::Error::invalid_length(N + 1, &self));
            }
            out.push(v);
        }
        Ok(out)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<Vec<T>, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(SeqAtMost::<T, N>(std::marker::PhantomData))
            .map(Bounded)
    }
}

/// Visits a map into a JSON object of at most `N` entries.
struct MapAtMost<const N: usize>;

impl<'de, const N: usize> Visitor<'de> for MapAtMost<N> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an object of at most {N} entries")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            if out.len() == N {
                return Err(serde::de::Error::invalid_length(N + 1, &self));
            }
            out.insert(k, v);
        }
        Ok(out)
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bounded<Map<String, Value>, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(MapAtMost::<N>).map(Bounded)
    }
}

/// Parameters of a request, an input or an output (the protocol's few keys, and some slack).
type Parameters = Bounded<Map<String, Value>, 16>;

/// One input tensor of a JSON request.
#[derive(Debug, Deserialize)]
struct Input {
    name: String,
    shape: Bounded<Vec<i64>, 8>,
    datatype: String,
    #[serde(default)]
    parameters: Parameters,
    data: Option<Elements>,
}

/// One requested output of a JSON request.
#[derive(Debug, Deserialize)]
struct Output {
    name: String,
    #[serde(default)]
    parameters: Parameters,
}

/// The JSON part of an infer request.
#[derive(Debug, Deserialize)]
struct Request {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Parameters,
    inputs: Bounded<Vec<Input>, 2>,
    #[serde(default)]
    outputs: Bounded<Vec<Output>, 2>,
}

/// A parsed infer request: the gRPC message, and per output name whether it goes back as
/// binary data.
#[derive(Debug)]
pub struct Parsed {
    /// The request as the gRPC service takes it (raw input contents).
    pub message: v2::ModelInferRequest,
    binary_outputs: HashMap<String, bool>,
    binary_by_default: bool,
}

/// A client error about the request body.
fn bad(message: String) -> ServerError {
    ServerError::InvalidArgument(message)
}

/// What went wrong in a JSON body, by position and kind, never quoting the body.
fn json_error(e: &serde_json::Error) -> ServerError {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io | Category::Eof => "ends early",
        Category::Syntax => "is not valid JSON",
        Category::Data => {
            "does not have the inference request's fields, types and sizes (inputs: at most 2 \
             of {name, shape of at most 8 dimensions, datatype, data}, outputs: at most 2, \
             parameters: at most 16 each, data numbers)"
        }
    };
    bad(format!(
        "the request's JSON {what} (line {}, column {})",
        e.line(),
        e.column()
    ))
}

/// A JSON parameter as a gRPC one (numbers that are not integers are dropped: the protocol's
/// parameters are bool, int64 or string).
fn parameter(v: &Value) -> Option<v2::InferParameter> {
    use v2::infer_parameter::ParameterChoice as P;
    let choice = match v {
        Value::Bool(b) => P::BoolParam(*b),
        Value::String(s) => P::StringParam(s.clone()),
        Value::Number(n) => P::Int64Param(n.as_i64()?),
        _ => return None,
    };
    Some(v2::InferParameter {
        parameter_choice: Some(choice),
    })
}

/// A boolean parameter (absent = None; another type is an error naming it).
fn flag(params: &Map<String, Value>, key: &str, owner: &str) -> Result<Option<bool>, ServerError> {
    match params.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!(
            "{owner}: parameter \"{key}\" must be true or false"
        ))),
    }
}

/// The elements a shape holds, when every dimension is non-negative and the product fits.
fn elements_of(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| {
        usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// Sets the values the request parsed on this thread may carry, and lifts the cap on drop.
struct ValueCap;

impl ValueCap {
    fn set(max: usize) -> Self {
        VALUES_LEFT.with(|left| left.set(Some(max)));
        ValueCap
    }

    /// Whether the request asked for more values than it may carry.
    fn exceeded(&self) -> bool {
        VALUES_LEFT.with(|left| left.get().is_none())
    }
}

impl Drop for ValueCap {
    fn drop(&mut self) {
        VALUES_LEFT.with(|left| left.set(Some(usize::MAX)));
    }
}

/// Parses an infer request for `model`/`version` from `body`, whose first `header_length`
/// bytes are JSON (all of it when None) and the rest the binary inputs. Its inputs may carry
/// at most `max_values` FP32 values in all (JSON numbers and binary data): the parse stops at
/// the first value beyond, so a body cannot make the server decode more than that.
pub fn parse(
    model: &str,
    version: &str,
    body: &[u8],
    header_length: Option<usize>,
    max_values: usize,
) -> Result<Parsed, ServerError> {
    let cap = ValueCap::set(max_values);
    let too_many = || {
        bad(format!(
            "the request's inputs hold more than {max_values} values, more than any served \
             model's inputs take in one request (scheduler.max_batch rows); send fewer rows"
        ))
    };
    let split = header_length.unwrap_or(body.len());
    if split > body.len() {
        return Err(bad(format!(
            "{HEADER_LENGTH} is {split} but the body holds {} bytes",
            body.len()
        )));
    }
    let (head, mut binary) = body.split_at(split);
    let req: Request = serde_json::from_slice(head).map_err(|e| {
        if cap.exceeded() {
            too_many()
        } else {
            json_error(&e)
        }
    })?;
    let mut message = v2::ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: req.id,
        ..Default::default()
    };
    for (key, value) in &req.parameters.0 {
        if key == "binary_data_output" {
            continue;
        }
        if let Some(p) = parameter(value) {
            message.parameters.insert(key.clone(), p);
        }
    }
    // Repeated fields were bounded while the JSON was read (`Bounded`).
    for input in req.inputs.0 {
        let owner = format!("input \"{}\"", crate::text::client_text(&input.name));
        let shape = input.shape.0;
        let binary_size = match input.parameters.0.get("binary_data_size") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "{owner}: parameter \"binary_data_size\" must be a byte count"
                        ))
                    })?,
            ),
        };
        if input.datatype != FP32 {
            return Err(bad(format!(
                "{owner} must be FP32, got \"{}\"",
                crate::text::client_text(&input.datatype)
            )));
        }
        let bytes = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "{owner} has both \"data\" and binary data; send one"
                )));
            }
            (None, None) => {
                return Err(bad(format!(
                    "{owner} has no \"data\" and no \"binary_data_size\" parameter"
                )));
            }
            (Some(size), None) => {
                if size > binary.len() {
                    return Err(bad(format!(
                        "{owner}: binary_data_size is {size} bytes but only {} binary bytes \
                         are left in the body",
                        binary.len()
                    )));
                }
                if !take_values(size.div_ceil(4)) {
                    return Err(too_many());
                }
                let (this, rest) = binary.split_at(size);
                binary = rest;
                if let Some(n) = elements_of(&shape)
                    && n.checked_mul(4) != Some(size)
                {
                    return Err(bad(format!(
                        "{owner}: binary_data_size is {size} bytes, shape {:?} FP32 needs {}",
                        &shape[..shape.len().min(8)],
                        n.saturating_mul(4)
                    )));
                }
                this.to_vec()
            }
            (None, Some(Elements(values))) => {
                if let Some(n) = elements_of(&shape)
                    && n != values.len()
                {
                    return Err(bad(format!(
                        "{owner}: \"data\" holds {} values, shape {:?} needs {n}",
                        values.len(),
                        &shape[..shape.len().min(8)]
                    )));
                }
                values.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
        };
        message.raw_input_contents.push(bytes);
        message
            .inputs
            .push(v2::model_infer_request::InferInputTensor {
                name: input.name,
                datatype: input.datatype,
                shape,
                ..Default::default()
            });
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data follow the JSON that no input's binary_data_size accounts \
             for",
            binary.len()
        )));
    }
    let binary_by_default =
        flag(&req.parameters.0, "binary_data_output", "the request")?.unwrap_or(false);
    let mut binary_outputs = HashMap::new();
    for output in req.outputs.0 {
        let owner = format!("output \"{}\"", crate::text::client_text(&output.name));
        let parameters = output.parameters.0;
        if parameters.contains_key("classification") {
            return Err(bad(format!(
                "{owner}: the classification extension is not supported; read the \
                 probabilities output"
            )));
        }
        if let Some(b) = flag(&parameters, "binary_data", &owner)? {
            binary_outputs.insert(output.name.clone(), b);
        }
        message
            .outputs
            .push(v2::model_infer_request::InferRequestedOutputTensor {
                name: output.name,
                ..Default::default()
            });
    }
    Ok(Parsed {
        message,
        binary_outputs,
        binary_by_default,
    })
}

/// An infer response body: the JSON, and the binary outputs appended (with the JSON's length
/// for the `Inference-Header-Content-Length` header) when any output is binary.
#[derive(Debug)]
pub struct Body {
    /// JSON header followed by binary outputs.
    pub bytes: Vec<u8>,
    /// Length of the JSON part when binary data follows it.
    pub header_length: Option<usize>,
}

/// The HTTP/REST body of a gRPC infer response (raw outputs, as the parsed request was raw).
pub fn respond(parsed: &Parsed, response: &v2::ModelInferResponse) -> Body {
    let mut outputs = Vec::new();
    let mut binary = Vec::new();
    for (k, tensor) in response.outputs.iter().enumerate() {
        let raw: &[u8] = response
            .raw_output_contents
            .get(k)
            .map_or(&[], Vec::as_slice);
        let as_binary = parsed
            .binary_outputs
            .get(&tensor.name)
            .copied()
            .unwrap_or(parsed.binary_by_default);
        let mut out = json!({
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        });
        if as_binary {
            out["parameters"] = json!({ "binary_data_size": raw.len() });
            binary.extend_from_slice(raw);
        } else {
            // Each value as its shortest decimal form that reads back as the same f32.
            let values: Vec<Value> = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .map(|v| {
                    v.to_string()
                        .parse::<f64>()
                        .map_or(Value::Null, Value::from)
                })
                .collect();
            out["data"] = Value::Array(values);
        }
        outputs.push(out);
    }
    let mut head = json!({
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    });
    if !response.id.is_empty() {
        head["id"] = json!(response.id);
    }
    if !response.parameters.is_empty() {
        let parameters: serde_json::Map<String, Value> = response
            .parameters
            .iter()
            .filter_map(|(k, p)| match &p.parameter_choice {
                Some(v2::infer_parameter::ParameterChoice::StringParam(s)) => {
                    Some((k.clone(), json!(s)))
                }
                Some(v2::infer_parameter::ParameterChoice::BoolParam(b)) => {
                    Some((k.clone(), json!(b)))
                }
                Some(v2::infer_parameter::ParameterChoice::Int64Param(i)) => {
                    Some((k.clone(), json!(i)))
                }
                Some(v2::infer_parameter::ParameterChoice::DoubleParam(d)) => {
                    Some((k.clone(), json!(d)))
                }
                _ => None,
            })
            .collect();
        head["parameters"] = Value::Object(parameters);
    }
    let mut bytes = serde_json::to_vec(&head).unwrap_or_default();
    let header_length = (!binary.is_empty()).then_some(bytes.len());
    bytes.extend_from_slice(&binary);
    Body {
        bytes,
        header_length,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn nested_and_flat_data_become_the_same_raw_contents() {
        let flat = br#"{"inputs":[{"name":"tabular","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6.5]}]}"#;
        let nested = br#"{"inputs":[{"name":"tabular","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6.5]]}]}"#;
        let a = parse("m", "", flat, None, usize::MAX).expect("flat");
        let b = parse("m", "", nested, None, usize::MAX).expect("nested");
        assert_eq!(a.message.raw_input_contents, b.message.raw_input_contents);
        assert_eq!(
            f32s(&a.message.raw_input_contents[0]),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]
        );
        assert_eq!(a.message.inputs[0].shape, vec![2, 3]);
    }

    #[test]
    fn binary_inputs_are_cut_from_the_body_after_the_json() {
        let head = br#"{"inputs":[{"name":"tabular","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"logits","parameters":{"binary_data":true}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&1.5f32.to_le_bytes());
        body.extend_from_slice(&(-2.0f32).to_le_bytes());
        let p = parse("m", "1", &body, Some(head.len()), usize::MAX).expect("binary");
        assert_eq!(f32s(&p.message.raw_input_contents[0]), vec![1.5, -2.0]);
        assert_eq!(p.message.model_version, "1");
        assert_eq!(p.binary_outputs.get("logits"), Some(&true));
        // A byte too many, a byte too few, a size that disagrees with the shape.
        let mut extra = body.clone();
        extra.push(0);
        let e = parse("m", "", &extra, Some(head.len()), usize::MAX).expect_err("extra");
        assert!(e.to_string().contains("binary_data_size accounts"), "{e}");
        let e = parse(
            "m",
            "",
            &body[..body.len() - 1],
            Some(head.len()),
            usize::MAX,
        )
        .expect_err("short");
        assert!(e.to_string().contains("binary_data_size is 8"), "{e}");
        let e = parse("m", "", &body, Some(body.len() + 1), usize::MAX).expect_err("header length");
        assert!(e.to_string().contains(HEADER_LENGTH), "{e}");
    }

    #[test]
    fn bad_bodies_name_the_problem_without_quoting_values() {
        let e = parse("m", "", b"{\"inputs\": [", None, usize::MAX).expect_err("eof");
        assert!(e.to_string().contains("ends early"), "{e}");
        let e = parse(
            "m",
            "",
            br#"{"inputs":[{"name":"t","shape":[1],"datatype":"FP32","data":["secret-value"]}]}"#,
            None,
            usize::MAX,
        )
        .expect_err("strings");
        assert!(!e.to_string().contains("secret-value"), "{e}");
        let e = parse(
            "m",
            "",
            br#"{"inputs":[{"name":"t","shape":[1,3],"datatype":"FP32","data":[1,2]}]}"#,
            None,
            usize::MAX,
        )
        .expect_err("count");
        assert!(e.to_string().contains("holds 2 values"), "{e}");
        let e = parse(
            "m",
            "",
            br#"{"inputs":[{"name":"t","shape":[1],"datatype":"INT64","data":[1]}]}"#,
            None,
            usize::MAX,
        )
        .expect_err("dtype");
        assert!(e.to_string().contains("must be FP32"), "{e}");
        // Repeated fields are refused while read, past their bound.
        let input = r#"{"name":"t","shape":[1],"datatype":"FP32","data":[1]}"#;
        let three = format!(r#"{{"inputs":[{input},{input},{input}]}}"#);
        let e = parse("m", "", three.as_bytes(), None, usize::MAX).expect_err("three inputs");
        assert!(e.to_string().contains("at most 2"), "{e}");
        let deep = br#"{"inputs":[{"name":"t","shape":[1,1,1,1,1,1,1,1,1],"datatype":"FP32","data":[1]}]}"#;
        let e = parse("m", "", deep, None, usize::MAX).expect_err("nine dimensions");
        assert!(e.to_string().contains("at most 8 dimensions"), "{e}");
    }

    #[test]
    fn the_values_of_a_request_are_capped_while_read() {
        let json = br#"{"inputs":[{"name":"t","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
        parse("m", "", json, None, 3).expect("exactly the cap");
        let e = parse("m", "", json, None, 2).expect_err("one value over");
        assert!(e.to_string().contains("more than 2 values"), "{e}");
        let head = br#"{"inputs":[{"name":"t","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#;
        let mut body = head.to_vec();
        body.extend_from_slice(&[0; 12]);
        parse("m", "", &body, Some(head.len()), 3).expect("binary at the cap");
        let e = parse("m", "", &body, Some(head.len()), 2).expect_err("binary over");
        assert!(e.to_string().contains("more than 2 values"), "{e}");
        // The cap is the parse's own: the next parse on this thread starts afresh.
        parse("m", "", json, None, 3).expect("a fresh allowance");
    }

    #[test]
    fn outputs_go_back_as_json_or_binary_as_asked() {
        let p = parse(
            "m",
            "",
            br#"{"inputs":[{"name":"t","shape":[1,1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"probabilities","parameters":{"binary_data":true}},{"name":"logits"}]}"#,
            None,
            usize::MAX,
        )
        .expect("parse");
        let raw = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let tensor = |name: &str| v2::model_infer_response::InferOutputTensor {
            name: name.into(),
            datatype: FP32.into(),
            shape: vec![1, 2],
            ..Default::default()
        };
        let response = v2::ModelInferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            outputs: vec![tensor("probabilities"), tensor("logits")],
            raw_output_contents: vec![raw(&[0.25, 0.75]), raw(&[-1.0, 2.0])],
            ..Default::default()
        };
        let body = respond(&p, &response);
        let n = body.header_length.expect("binary follows");
        let head: Value = serde_json::from_slice(&body.bytes[..n]).expect("json");
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert_eq!(head["outputs"][1]["data"], json!([-1.0, 2.0]));
        assert_eq!(f32s(&body.bytes[n..]), vec![0.25, 0.75]);
    }
}
